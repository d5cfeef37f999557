"""`baf train`: train a BaF predictor on cached edge features of a folder of training images.

The first run fills the feature cache (float16 Z and X of every image, a few minutes); later runs and
--resume reuse it. One-for-all: `--channels 8,16,32,64,128 --bits 2-8` (C and n drawn per batch);
dedicated: `--channels 64 --bits 8`. Under torchrun (WORLD_SIZE set) it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from baf.argtypes import positive_int


def _int_list(text: str) -> tuple[int, ...]:
    """'8,16,32' or '2-8' (inclusive range), or a mix: '2-4,8'."""
    values: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            values.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 8,16,32 or 2-8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return tuple(sorted(values))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `train` subcommand to `sub`."""
    p = sub.add_parser("train", help="train a BaF predictor on cached features", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--layer", type=int, help="split layer (default: the model's)")
    p.add_argument("--images", type=Path, required=True, help="folder of training images (never the evaluation set)")
    p.add_argument("--size", type=positive_int, default=512, help="input size (default: %(default)s)")
    p.add_argument("--cache", type=Path, help="feature cache folder (default: cache/MODEL_lLAYER_sSIZE)")
    p.add_argument("--cache-only", action="store_true", help="fill the cache and stop")
    p.add_argument("--ranking", type=Path, help="ranking file (default: the packaged one for the model and layer)")
    p.add_argument("--channels", type=_int_list, default=(8, 16, 32, 64, 128),
                   help="C values served, e.g. 8,16,32,64,128 (default) or 64")
    p.add_argument("--bits", type=_int_list, default=tuple(range(2, 9)),
                   help="n values served, e.g. 2-8 (default) or 8")
    p.add_argument("--hidden", type=positive_int, default=64,
                   help="hidden channels of the network (default: %(default)s)")
    p.add_argument("--no-linear-skip", dest="linear_skip", action="store_false",
                   help="plain BaF from random init, without the least-squares linear path")
    p.add_argument("--batch-size", type=positive_int, default=16, help="per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=500, help="steps of linear lr warm-up (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--max-steps", type=positive_int, help="stop at this total step count")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes (this invocation)")
    p.add_argument("--heldout", type=int, default=100, help="last N cached images held out (default: %(default)s)")
    p.add_argument("--heldout-every", type=positive_int, default=500,
                   help="steps between held-out losses (default: %(default)s)")
    p.add_argument("--log-every", type=positive_int, default=50,
                   help="steps between loss lines (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=positive_int, default=500,
                   help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/train"),
                   help="run folder: checkpoints with optimizer state (default: %(default)s)")
    p.add_argument("--name", help="checkpoint name (default: MODEL_lLAYER_cC..._nN..._hHIDDEN)")
    p.add_argument("--publish", type=Path,
                   help="also write weights + sidecar here at each checkpoint, e.g. baf/checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's checkpoint (weights, optimizer, step)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    p.add_argument("--weights", type=Path, default=os.environ.get("BAF_WEIGHTS"),
                   help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)")
    p.set_defaults(run=run)


def _span(values: tuple[int, ...]) -> str:
    """'8-128' style label of a value list for checkpoint names."""
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def run(args: argparse.Namespace) -> int:
    """Build or reuse the cache, set up the predictor, train, checkpoint."""
    import torch

    from baf.commands.rank import list_images
    from baf.errors import BafError
    from baf.models.zoo import get_spec, load_split
    from baf.predictor import BafPredictor
    from baf.ranking import find_ranking
    from baf.train import Distributed, FeatureCache, TrainConfig, build_cache, fit

    torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise BafError("--device cuda: no CUDA device available")
    spec = get_spec(args.model)
    layer = spec.split_layer if args.layer is None else args.layer
    cache_dir = args.cache or Path("cache") / f"{spec.name}_l{layer}_s{args.size}"
    if (cache_dir / "meta.json").is_file() and not args.cache_only:
        cache = FeatureCache.open(cache_dir)
        split = load_split(spec.name, layer, args.weights)
    else:
        split = load_split(spec.name, layer, args.weights)
        split.model.check_size(args.size)
        cache = build_cache(split, list_images(args.images), cache_dir, size=args.size)
    if args.cache_only:
        print(f"{cache_dir}: {len(cache.names)} images, data_id {cache.data_id}")
        return 0
    if (cache.meta["model"], cache.meta["layer"], cache.meta["size"]) != (spec.name, layer, args.size):
        raise BafError(f"{cache_dir} caches {cache.meta['model']} layer {cache.meta['layer']} at {cache.meta['size']}")
    ranking = find_ranking(spec.name, layer, args.ranking)
    try:
        predictor = BafPredictor.from_split(split, ranking, channels=args.channels, bits=args.bits,
                                            hidden=args.hidden, linear_skip=args.linear_skip)
    except ValueError as e:
        raise BafError(str(e)) from None
    name = args.name or f"{spec.name}_l{layer}_c{_span(args.channels)}_n{_span(args.bits)}_h{args.hidden}"
    cfg = TrainConfig(
        channels=predictor.config.channels, bits=predictor.config.bits, out_dir=args.out_dir, name=name,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
        max_steps=args.max_steps, max_minutes=args.max_minutes, heldout=args.heldout,
        heldout_every=args.heldout_every, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        publish_dir=args.publish, command=shlex.join(["baf", *sys.argv[1:]]),
    )  # fmt: skip
    state = fit(cfg, predictor, cache, resume=args.resume, dist_info=Distributed.setup(use_cuda))
    print(f"{args.out_dir / name}: {state.step} steps, {state.wall_seconds / 3600:.2f} h")
    return 0
