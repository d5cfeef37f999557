"""`baf rank`: order the split layer's BN-output channels; the edge sends the first C of the order.

--method correlation is the paper's (eq. 2-3: by correlation with the layer's input). --method restoration
picks channels greedily so that those picked best restore all P by least squares from their --kernel x
--kernel neighbourhoods (what the `linear` predictor does); its order is nested like the paper's.
--method residual-pca keeps a --base ranking and builds a sent sequence for the --widths that mixes its channels
with virtual channels (fixed directions over all P: the principal axes of what a --kernel x --kernel
least-squares restoration from the rows before leaves; --share of each block is virtual). It reads the feature
cache `baf train` / `baf fit-linear` fill (built from --images when missing), leaving the last --heldout
cached images out; serve it with a `baf fit-linear --ranking` checkpoint (only the linear kind takes virtual
channels), and give the same ranking file to the edge and the server.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from baf.argtypes import int_list, odd_int, positive_int, unit_float

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `rank` subcommand to `sub`."""
    p = sub.add_parser("rank", help="rank the split layer's channels", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--layer", type=int, help="split layer (default: the model's)")
    p.add_argument("--images", type=Path, required=True, help="folder of training images (never the evaluation set)")
    p.add_argument("-o", "--output", type=Path, required=True, help="ranking file to write (JSON)")
    p.add_argument("--limit", type=positive_int,
                   help="use only the first N images by file name (residual-pca: N cached ones, spread evenly)")
    p.add_argument("--size", type=positive_int, default=512, help="input size (default: %(default)s)")
    p.add_argument("--method", choices=("correlation", "restoration", "residual-pca"), default="correlation",
                   help="correlation (the paper's eq. 2-3, default), restoration (greedy least squares) or "
                        "residual-pca (ranked plus virtual channels)")
    p.add_argument("--kernel", type=odd_int,
                   help="neighbourhood of --method restoration and residual-pca, odd (default: 3 and 9)")
    p.add_argument("--base", type=Path, help="residual-pca: the channel ranking it builds on (default: packaged)")
    p.add_argument("--widths", type=int_list, default=(8, 16, 32, 64, 128),
                   help="residual-pca: the C every prefix serves (default: 8,16,32,64,128)")
    p.add_argument("--share", type=unit_float, default=1.0,
                   help="residual-pca: virtual share of each block (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-4, help="residual-pca: relative ridge (default: %(default)s)")
    p.add_argument("--cache", type=Path, help="residual-pca: feature cache (default: cache/MODEL_lLAYER_sSIZE)")
    p.add_argument("--heldout", type=int, default=100,
                   help="residual-pca: last N cached images left out (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: %(default)s)")
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
    """Rank over the images (or their cached features) and write the ranking file."""
    import torch

    from baf.errors import BafError
    from baf.models.zoo import load_split
    from baf.ranking import rank_images, write_ranking

    if not args.output.parent.is_dir():
        raise BafError(f"-o: folder {args.output.parent} does not exist")
    command = shlex.join(["baf", *sys.argv[1:]])
    if args.method == "residual-pca":
        ranking = residual_pca(args, command)
        virtual = sum(c < 0 for c in ranking.sequence or ())
        print(f"{args.output}: ranking_id {ranking.id}, {ranking.images['count']} images, "
              f"{virtual} virtual channels among the first {args.widths[-1]} rows")  # fmt: skip
    else:
        paths = list_images(args.images, args.limit)
        split = load_split(args.model, args.layer, args.weights)
        split.model.check_size(args.size)
        torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
        ranking = rank_images(split, paths, size=args.size, method=args.method, kernel=args.kernel or 3,
                              command=command)  # fmt: skip
        print(f"{args.output}: ranking_id {ranking.id}, {len(paths)} images, "
              f"first channels {list(ranking.order[:8])}")  # fmt: skip
    write_ranking(ranking, args.output)
    return 0


def residual_pca(args: argparse.Namespace, command: str) -> Any:
    """The residual-pca ranking of the cached training features (the cache is filled from --images if missing)."""
    import torch

    from baf.commands.train import training_features
    from baf.errors import BafError
    from baf.ranking import find_ranking, names_digest
    from baf.residual_ranking import residual_pca_ranking
    from baf.train import feature_batches, spread

    torch.set_num_threads(args.threads)
    if args.ridge < 0:
        raise BafError(f"--ridge must be >= 0, got {args.ridge}")
    split, cache, n_train = training_features(args)
    if args.widths[-1] > split.channels:
        raise BafError(f"--widths: C={args.widths[-1]} exceeds the {split.channels} channels of layer {split.layer}")
    base = find_ranking(split.model.name, split.layer, args.base)
    picks = spread(range(n_train), args.limit)
    images = {"count": len(picks), "names_sha256": names_digest(cache.names[i] for i in picks), "size": args.size,
              "data_id": cache.data_id}  # fmt: skip
    return residual_pca_ranking(base, lambda: feature_batches(cache, picks, batch=8), widths=args.widths,
                                share=args.share, kernel=args.kernel or 9, ridge=args.ridge, images=images,
                                command=command)  # fmt: skip
