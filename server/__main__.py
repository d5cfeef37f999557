"""`python -m server [flags]`: the same as `baf serve [flags]` (see `baf serve --help`)."""

import sys

from baf.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
