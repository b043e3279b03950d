"""Running jobs: dispatcher (which backend), runner (one attempt), worker (a process), recovery."""
