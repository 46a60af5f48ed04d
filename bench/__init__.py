"""`make bench`: Ami's proxy against direct, nginx and haproxy references in one run."""
