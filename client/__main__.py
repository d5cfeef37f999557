"""`python -m client SOURCE --server HOST:PORT ...`: the same as `baf stream`."""

import sys

from baf.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
