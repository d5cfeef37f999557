"""The `baf` command: parses arguments, dispatches to a subcommand, turns errors into exit codes.

Exit codes: 0 success, 2 user or data error (one line on stderr, no traceback), 70 internal error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from baf import __version__
from baf.errors import BafError

log = logging.getLogger("baf")

# Subcommand modules under baf.commands, in the order `baf --help` lists them.
COMMANDS: tuple[str, ...] = ("encode", "info", "decode", "eval", "rank", "fit_linear", "train", "stream", "serve")

EXIT_USAGE = 2
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="baf", description="BaF Stream: split inference with Back-and-Forth feature prediction."
    )
    parser.add_argument("--version", action="version", version=f"baf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"baf.commands.{name}").register(sub)
    return parser


def setup_logging(verbose: bool) -> None:
    """The one logging configuration of the command line: messages only, debug with --verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    """Run `baf` with `argv` (default: sys.argv[1:]) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return guarded(args.run, args)


def guarded(run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """`run(args)`'s exit code, with what it raises turned into one (the table in the module docstring).

    Also used by scripts with a parser of their own (`python -m client.demo`).
    """
    try:
        return int(run(args) or 0)
    except BafError as e:
        log.error("error: %s", e)
        log.debug("details", exc_info=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except Exception:
        log.critical("internal error; please report it with the --verbose output", exc_info=True)
        return EXIT_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
