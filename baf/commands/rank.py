"""`baf rank`: order the split layer's BN-output channels; the edge sends the first C of the order.

--method correlation is the paper's (eq. 2-3: by correlation with the layer's input). --method restoration
picks channels greedily so that those picked best restore all P by least squares from their --kernel x
--kernel neighbourhoods (what the `linear` predictor does); its order is nested like the paper's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from baf.argtypes import odd_int, positive_int

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `rank` subcommand to `sub`."""
    p = sub.add_parser("rank", help="rank the split layer's channels", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--layer", type=int, help="split layer (default: the model's)")
    p.add_argument("--images", type=Path, required=True, help="folder of training images (never the evaluation set)")
    p.add_argument("-o", "--output", type=Path, required=True, help="ranking file to write (JSON)")
    p.add_argument("--limit", type=positive_int, help="use only the first N images by file name")
    p.add_argument("--size", type=positive_int, default=512, help="input size (default: %(default)s)")
    p.add_argument("--method", choices=("correlation", "restoration"), default="correlation",
                   help="correlation (the paper's eq. 2-3, default) or restoration (greedy least squares)")
    p.add_argument("--kernel", type=odd_int, default=3,
                   help="neighbourhood of --method restoration, odd (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=os.environ.get("BAF_WEIGHTS"),
                   help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)")
    p.set_defaults(run=run)


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files directly in `folder`, sorted by name, the first `limit` of them."""
    from baf.errors import BafError

    if not folder.is_dir():
        raise BafError(f"--images: {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise BafError(f"--images: no .jpg/.png files in {folder}")
    return paths[:limit]


def run(args: argparse.Namespace) -> int:
    """Rank over the images and write the ranking file."""
    import torch

    from baf.errors import BafError
    from baf.models.zoo import load_split
    from baf.ranking import rank_images, write_ranking

    if not args.output.parent.is_dir():
        raise BafError(f"-o: folder {args.output.parent} does not exist")
    paths = list_images(args.images, args.limit)
    split = load_split(args.model, args.layer, args.weights)
    split.model.check_size(args.size)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    command = shlex.join(["baf", *sys.argv[1:]])
    ranking = rank_images(split, paths, size=args.size, method=args.method, kernel=args.kernel, command=command)
    write_ranking(ranking, args.output)
    print(f"{args.output}: ranking_id {ranking.id}, {len(paths)} images, first channels {list(ranking.order[:8])}")
    return 0
