"""`python -m comfyfleet.sim`: run one simulator in the foreground."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
