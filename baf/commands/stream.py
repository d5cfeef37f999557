"""`baf stream`: send a video, a folder of images or a camera to a BaF server and get detections back.

Frames are read through `baf.sources`, encoded by the edge half (`baf.edge`) and streamed over the
bidirectional Stream RPC with a bounded in-flight window; a dropped connection is reopened with
backoff and unanswered frames are resent. Results go to JSON lines (`-o`), an annotated video
(`--annotate`), and a summary on stdout. Every flag also reads a BAF_* variable (e.g. BAF_SERVER);
the bearer token comes from --token-file or BAF_TOKEN.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `stream` subcommand to `sub`."""
    from client.config import add_arguments

    p = sub.add_parser("stream", help="stream frames to a BaF server and write its detections (edge client)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Stream, then print the summary (on stderr when the JSON lines go to stdout)."""
    import sys

    from client.config import from_args
    from client.stream import stream

    config = from_args(args)
    summary = stream(config)
    print("\n".join(summary.lines()), file=sys.stderr if str(config.output) == "-" else sys.stdout)
    return 0
