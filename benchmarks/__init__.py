"""`make bench`: the gateway measured beside a direct upload and nginx, in one run."""
