"""`baf fit-linear`: the `linear` predictor, a k x k least-squares conv from the C ranked channels to all P.

Normal equations are streamed over the cached training features (the cache `baf train` fills) once for the
largest C; every smaller C is a leading block of the same system (nested ranking), so one pass fits them all.
The last --heldout cached images are left out, as in `baf train`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from baf.argtypes import int_list, odd_int, positive_int, span_label


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `fit-linear` subcommand to `sub`."""
    p = sub.add_parser("fit-linear", help="fit the least-squares linear predictor in closed form",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--layer", type=int, help="split layer (default: the model's)")
    p.add_argument("--images", type=Path, required=True, help="folder of training images (never the evaluation set)")
    p.add_argument("--size", type=positive_int, default=512, help="input size (default: %(default)s)")
    p.add_argument("--cache", type=Path, help="feature cache folder (default: cache/MODEL_lLAYER_sSIZE)")
    p.add_argument("--ranking", type=Path, help="ranking file (default: the packaged one for the model and layer)")
    p.add_argument("--channels", type=int_list, default=(8, 16, 32, 64, 128),
                   help="C values served, e.g. 8,16,32,64,128 (default) or 64")
    p.add_argument("--bits", type=int_list, default=tuple(range(2, 9)),
                   help="n values served (default: 2-8)")
    p.add_argument("--quantized-fits", type=int_list, default=(),
                   help="served n values that get a fit of their own on n-bit inputs, e.g. 2,3 (default: none; "
                   "every n uses the fit on unquantized Z); each costs one more pass's worth of products")
    p.add_argument("--kernel", type=odd_int, default=5, help="odd k of the k x k conv (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-4,
                   help="ridge, relative to the mean Gram diagonal (default: %(default)s)")
    p.add_argument("--max-images", type=positive_int,
                   help="use at most this many training images, spread evenly (default: all)")
    p.add_argument("--heldout", type=int, default=100, help="last N cached images left out (default: %(default)s)")
    p.add_argument("--out", type=Path, help="checkpoint stem (default: baf/checkpoints/MODEL_lLAYER_linear_cC_kK)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=os.environ.get("BAF_WEIGHTS"),
                   help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build or reuse the feature cache, stream the normal equations, solve, write the checkpoint."""
    import torch
    from tqdm import tqdm

    from baf.commands.train import training_features
    from baf.errors import BafError
    from baf.predictor import BafPredictor, fit_linear, save_predictor
    from baf.ranking import find_ranking
    from baf.train import feature_batches, heldout_loss

    torch.set_num_threads(args.threads)
    if args.ridge < 0:
        raise BafError(f"--ridge must be >= 0, got {args.ridge}")
    split, cache, n_train = training_features(args)
    model, layer = split.model.name, split.layer
    ranking = find_ranking(model, layer, args.ranking)
    try:
        predictor = BafPredictor.from_split(split, ranking, channels=args.channels, bits=args.bits,
                                            kind="linear", linear_kernel=args.kernel,
                                            linear_bits=args.quantized_fits)
    except ValueError as e:
        raise BafError(str(e)) from None
    images = min(n_train, args.max_images or n_train)
    start = time.monotonic()
    with tqdm(total=images, desc="fit-linear", unit="img", disable=None) as bar:  # shown on a terminal only
        def counted() -> Iterator[torch.Tensor]:
            for z in feature_batches(cache, range(n_train), args.max_images):
                yield z
                bar.update(z.shape[0])

        samples = fit_linear(predictor, counted(), ridge=args.ridge)
    seconds = time.monotonic() - start
    held = heldout_loss(predictor, torch.from_numpy(cache.z[n_train:].astype("float32")), torch.device("cpu"))
    stem = args.out or Path("baf/checkpoints") / f"{model}_l{layer}_linear_c{span_label(args.channels)}_k{args.kernel}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    extra = {"train": {
        "data_id": cache.data_id, "command": shlex.join(["baf", *sys.argv[1:]]), "images": images,
        "samples": samples, "ridge": args.ridge, "wall_hours": round(seconds / 3600, 4), "steps": 0,
        "heldout_images": args.heldout, "heldout_curve": [{"step": 0, **held}],
    }}  # fmt: skip
    weights = save_predictor(predictor, stem, extra)
    per = ", ".join(f"C={c}: {v:.4f}" for c, v in held["per_channels"].items())
    print(f"{weights}: k={args.kernel}, {samples:,} positions in {seconds:.0f} s; held-out loss {per}")
    return 0
