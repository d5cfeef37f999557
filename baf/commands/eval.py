"""`baf eval`: COCO AP of a model on a COCO-style folder, unsplit (--baseline) or split, uncompressed (--split-only)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand to `sub`."""
    p = sub.add_parser("eval", help="COCO AP of a model, unsplit or split", description=__doc__)
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--data", type=Path, required=True, help="folder with images/ and one instances_*.json")
    p.add_argument("--json", type=Path, help="write the report here")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--baseline",
        dest="mode",
        action="store_const",
        const="baseline",
        help="run the whole model unsplit (the default)",
    )
    mode.add_argument(
        "--split-only",
        dest="mode",
        action="store_const",
        const="split-only",
        help="run edge and cloud halves with Z passed on unchanged",
    )
    p.set_defaults(mode="baseline")
    p.add_argument("--layer", type=int, help="split layer (default: the model's, 8 for yolov3-tiny, 12 for yolov3)")
    p.add_argument(
        "--size", type=_positive_int, default=512, help="input size, a multiple of 32 (default: %(default)s)"
    )
    p.add_argument("--conf-thres", type=_unit_float, default=0.001, help="default: %(default)s")
    p.add_argument("--nms-iou", type=_unit_float, default=0.45, help="default: %(default)s")
    p.add_argument(
        "--max-det", type=_positive_int, default=300, help="detections kept per image (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=1, help="default: %(default)s")
    p.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get("BAF_WEIGHTS"),
        help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)",
    )
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N images (by image id)")
    p.add_argument("--predictor", type=Path, help="BaF checkpoint (.json or .safetensors): send only --channels "
                   "ranked channels at --bits, restore the rest")
    p.add_argument("--channels", type=_positive_int, default=64, help="C, with --predictor (default: %(default)s)")
    p.add_argument("--bits", type=_positive_int, default=8, help="n, with --predictor (default: %(default)s)")
    p.add_argument("--record", action="store_true",
                   help="with --predictor: store AP and AP50 in the checkpoint's sidecar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and data, evaluate, print a summary table, write the JSON report."""
    from baf.errors import BafError
    from baf.evaluate import CocoDataset, EvalSettings, evaluate, write_json
    from baf.models.split import split
    from baf.models.zoo import get_spec, load_model

    if args.json and not args.json.parent.is_dir():
        raise BafError(f"--json: folder {args.json.parent} does not exist")
    if args.layer is not None and args.mode == "baseline":
        raise BafError("--layer only applies to a split mode such as --split-only")
    spec = get_spec(args.model)
    model = load_model(spec.name, args.weights)
    settings = EvalSettings(
        size=args.size,
        conf_threshold=args.conf_thres,
        iou_threshold=args.nms_iou,
        max_detections=args.max_det,
        batch_size=args.batch_size,
    )
    model.check_size(settings.size)
    layer = spec.split_layer if args.layer is None else args.layer
    cut = None if args.mode == "baseline" and args.predictor is None else split(model, layer)
    transform, mode = None, None
    if args.predictor is not None:
        from baf.predictor import load_predictor, record_eval, z_transform
        from baf.ranking import load_ranking

        ranking_id = load_ranking(spec.name, layer).id
        predictor = load_predictor(args.predictor, model=spec.name, layer=layer, ranking_id=ranking_id)
        try:
            transform = z_transform(predictor, args.channels, args.bits)
        except ValueError as e:
            raise BafError(f"--predictor {args.predictor}: {e}") from None
        mode = f"baf C={args.channels} n={args.bits}"
    dataset = CocoDataset.open(args.data, args.limit)
    result = evaluate(model, dataset, spec.category_ids, split=cut, z_transform=transform, mode=mode, settings=settings)
    rows = [
        ("model", result.model),
        ("mode", result.mode),
        ("split layer", "-" if result.split_layer is None else str(result.split_layer)),
        ("size", str(settings.size)),
        ("images", str(result.images)),
    ]
    rows += [(name, f"{value:.4f}") for name, value in result.stats.items() if name in ("AP", "AP50", "AP75")]
    rows += [(f"{stage} ms/frame", f"{ms:.1f}") for stage, ms in result.timings_ms.items()]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if args.json:
        write_json(result, args.json)
    if args.record and args.predictor is not None:
        entry = {"dataset": args.data.name, "images": result.images, "channels": args.channels, "bits": args.bits,
                 "size": settings.size, "AP": round(result.ap, 4), "AP50": round(result.ap50, 4)}
        record_eval(args.predictor, str(predictor.source_sha256), entry)
    return 0
