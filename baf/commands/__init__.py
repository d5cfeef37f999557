"""`baf` subcommands: each module has `register(subparsers)` and imports heavy modules only when run."""
