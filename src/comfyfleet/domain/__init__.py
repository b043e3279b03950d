"""The pure core: job records, transitions, progress, failure classes and policies.

Nothing here performs I/O, reads a clock or an environment variable; time is passed in.
"""
