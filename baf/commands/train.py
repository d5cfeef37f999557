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
from typing import Any

from baf.argtypes import int_list, odd_int, positive_int, span_label


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
    p.add_argument("--channels", type=int_list, default=(8, 16, 32, 64, 128),
                   help="C values served, e.g. 8,16,32,64,128 (default) or 64")
    p.add_argument("--bits", type=int_list, default=tuple(range(2, 9)),
                   help="n values served, e.g. 2-8 (default) or 8")
    p.add_argument("--hidden", type=positive_int, default=64,
                   help="hidden channels of the network (default: %(default)s)")
    p.add_argument("--kind", choices=("hybrid", "baf"), default="hybrid",
                   help="hybrid: least-squares linear path plus the BaF branch as its residual (default); "
                   "baf: the paper's predictor from random init")
    p.add_argument("--linear-kernel", type=odd_int, default=5,
                   help="k of the hybrid's k x k linear path (default: %(default)s)")
    p.add_argument("--linear-from", type=Path, metavar="CKPT",
                   help="start the hybrid's linear path from this `baf fit-linear` checkpoint instead of fitting it")
    p.add_argument("--init-from", type=Path, metavar="CKPT",
                   help="start a new run from this checkpoint's weights (same kind, C, n, widths); "
                   "its sidecar and the new one record where the run began")
    p.add_argument("--balance-rates", action="store_true",
                   help="divide each step's loss by the starting loss at its (C, n), so the high rates are not "
                   "drowned by the low rates' larger errors (one-for-all runs)")
    p.add_argument("--feature-loss-layer", type=int, metavar="L",
                   help="add a loss term on model layer L's output (e.g. 10) beside eq. 7")
    p.add_argument("--feature-loss-weight", type=float, default=0.0,
                   help="weight of the --feature-loss-layer term (default: off)")
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


def split_and_cache(args: argparse.Namespace, model: str, layer: int) -> tuple[Any, Any, Path]:
    """(split, feature cache, cache folder) for --images/--size/--cache/--weights: an existing cache is reused,
    else the edge half fills one. Shared by `baf train` and `baf fit-linear`."""
    from baf.commands.rank import list_images
    from baf.errors import BafError
    from baf.models.zoo import load_split
    from baf.train import FeatureCache, build_cache

    cache_dir = args.cache or Path("cache") / f"{model}_l{layer}_s{args.size}"
    split = load_split(model, layer, args.weights)
    if (cache_dir / "meta.json").is_file() and not getattr(args, "cache_only", False):
        cache = FeatureCache.open(cache_dir)
    else:
        split.model.check_size(args.size)
        cache = build_cache(split, list_images(args.images), cache_dir, size=args.size)
    if (cache.meta["model"], cache.meta["layer"], cache.meta["size"]) != (model, layer, args.size):
        raise BafError(f"{cache_dir} caches {cache.meta['model']} layer {cache.meta['layer']} at {cache.meta['size']}")
    return split, cache, cache_dir


def training_features(args: argparse.Namespace) -> tuple[Any, Any, int]:
    """(split, feature cache, training images) for --model/--layer and the cache flags of `split_and_cache`; the
    last --heldout cached images are left out of the training images. Shared by `baf fit-linear` and `baf rank`."""
    from baf.errors import BafError
    from baf.models.zoo import get_spec

    spec = get_spec(args.model)
    split, cache, _ = split_and_cache(args, spec.name, spec.split_layer if args.layer is None else args.layer)
    n_train = len(cache.names) - args.heldout
    if args.heldout < 0 or n_train < 1:
        raise BafError(f"--heldout {args.heldout} leaves no training images out of {len(cache.names)}")
    return split, cache, n_train


def init_weights(predictor: Any, path: Path, model: str, layer: int) -> dict[str, Any]:
    """Load `path`'s weights (a predictor of the same configuration) into `predictor`; what the sidecar records."""
    from baf.errors import BafError
    from baf.predictor import load_predictor, read_sidecar, trained_steps

    source = load_predictor(path, model=model, layer=layer)
    if source.config != predictor.config:
        raise BafError(f"--init-from {path}: it is {source.config}, this run is {predictor.config}")
    if source.split_digest() != predictor.split_digest():
        raise BafError(f"--init-from {path}: made for another split (weights or channel order) than this run's")
    predictor.load_state_dict(source.state_dict(), strict=True)
    steps = trained_steps(read_sidecar(path)[0]) or 0
    return {"checkpoint": path.name, "sha256": source.source_sha256, "steps": steps}


def run(args: argparse.Namespace) -> int:
    """Build or reuse the cache, set up the predictor, train, checkpoint."""
    import torch

    from baf.errors import BafError
    from baf.models.zoo import get_spec
    from baf.predictor import BafPredictor
    from baf.ranking import find_ranking
    from baf.train import Distributed, TrainConfig, fit

    torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise BafError("--device cuda: no CUDA device available")
    spec = get_spec(args.model)
    layer = spec.split_layer if args.layer is None else args.layer
    split, cache, cache_dir = split_and_cache(args, spec.name, layer)
    if args.cache_only:
        print(f"{cache_dir}: {len(cache.names)} images, data_id {cache.data_id}")
        return 0
    ranking = find_ranking(spec.name, layer, args.ranking)
    try:
        predictor = BafPredictor.from_split(split, ranking, channels=args.channels, bits=args.bits,
                                            hidden=args.hidden, kind=args.kind, linear_kernel=args.linear_kernel)
    except ValueError as e:
        raise BafError(str(e)) from None
    linear_fitted = False
    init_from = None
    if args.init_from is not None:
        if args.resume or args.linear_from is not None:
            raise BafError("--init-from starts a new run from a whole checkpoint: not with --resume or --linear-from")
        init_from = init_weights(predictor, args.init_from, spec.name, layer)
        linear_fitted = True
    if args.linear_from is not None and not args.resume:
        if args.kind != "hybrid":
            raise BafError("--linear-from needs --kind hybrid")
        from baf.predictor import copy_linear, load_predictor

        try:
            copy_linear(predictor, load_predictor(args.linear_from, model=spec.name, layer=layer))
        except ValueError as e:
            raise BafError(f"--linear-from {args.linear_from}: {e}") from None
        linear_fitted = True
    feature = None
    if args.feature_loss_layer is not None:
        from functools import partial

        from baf.train import FeatureLoss

        try:
            split.cloud.features(torch.zeros(1, split.channels, 2, 2), args.feature_loss_layer)
        except ValueError as e:
            raise BafError(f"--feature-loss-layer: {e}") from None
        split.cloud.requires_grad_(False)
        feature = FeatureLoss(partial(split.cloud.features, upto=args.feature_loss_layer), args.feature_loss_weight)
    channels, bits = span_label(args.channels), span_label(args.bits)
    name = args.name or f"{spec.name}_l{layer}_{args.kind}_c{channels}_n{bits}_h{args.hidden}"
    cfg = TrainConfig(
        channels=predictor.config.channels, bits=predictor.config.bits, out_dir=args.out_dir, name=name,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed,
        max_steps=args.max_steps, max_minutes=args.max_minutes, heldout=args.heldout,
        heldout_every=args.heldout_every, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        publish_dir=args.publish, command=shlex.join(["baf", *sys.argv[1:]]),
        feature_layer=args.feature_loss_layer, feature_weight=args.feature_loss_weight,
        balance_rates=args.balance_rates, init_from=init_from,
    )  # fmt: skip
    state = fit(cfg, predictor, cache, resume=args.resume, linear_fitted=linear_fitted, feature=feature,
                dist_info=Distributed.setup(use_cuda))
    print(f"{args.out_dir / name}: {state.step} steps, {state.wall_seconds / 3600:.2f} h")
    return 0
