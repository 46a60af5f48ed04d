"""meshctl command groups: each module exposes ``add_parser(subparsers)`` and sets ``args.func``."""
