"""`baf serve`: the gRPC detection server (also `python -m server`).

Serves `baf.v1.DetectionService` (proto/baf/v1/detection_service.proto), grpc.health.v1 and server
reflection, with Prometheus metrics on --metrics-port. Every flag also reads a BAF_* environment
variable (flags win); the bearer token comes from --token-file or BAF_TOKEN only. SIGTERM or SIGINT
drains: health turns NOT_SERVING, frames in flight are answered, then the process exits 0.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand to `sub`."""
    from server.config import add_arguments

    p = sub.add_parser("serve", help="serve detections over gRPC (cloud side)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the config (flags > env > defaults), then serve until a signal."""
    import asyncio
    import os

    from server.config import from_args

    config = from_args(args, os.environ)  # bad settings fail before the heavy imports

    from server.app import serve

    asyncio.run(serve(config))
    return 0
