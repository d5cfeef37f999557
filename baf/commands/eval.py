"""`baf eval`: COCO AP of a model on a COCO-style folder, unsplit (--baseline) or split, uncompressed (--split-only).

--codec sends every image through the real bitstream path (edge encoder -> `.baf` bytes -> cloud decoder ->
restoration by --predictor or --restoration zeros) and reports the mean bytes per image against the source
JPEGs. --all-channels codes all P channels at --bits with HEVC at --qp, no predictor (the paper's comparison).
--recode is the cloud-only baseline: each image scaled to --size on its long side, coded as JPEG at --quality
or as one HEVC intra picture at --qp, decoded and fed to the unsplit model (`baf/recode.py` has the settings).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from baf.argtypes import positive_int, unit_float


def _check_recode_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations --recode does not take (and --quality without it), before anything heavy loads."""
    from baf.errors import BafError
    from baf.recode import check_qp, check_quality

    if args.recode is None:
        if args.quality is not None:
            raise BafError("--quality applies to --recode jpeg")
        return
    if args.mode != "baseline":
        raise BafError("--recode feeds the recoded image to the unsplit model; drop --split-only")
    for flag, value in (("--predictor", args.predictor), ("--codec", args.codec), ("--all-channels", args.all_channels),
                        ("--channels", args.channels), ("--restoration", args.restoration), ("--effort", args.effort),
                        ("--save-bitstreams", args.save_bitstreams), ("--record", args.record)):
        if value not in (None, False):
            raise BafError(f"--recode sends the image itself to the unsplit model; drop {flag}")
    if args.recode == "jpeg":
        if args.qp is not None:
            raise BafError("--qp applies to --recode hevc; --recode jpeg takes --quality")
        if args.quality is None:
            raise BafError("--recode jpeg needs --quality 1..100")
        check_quality(args.quality)
    else:
        if args.quality is not None:
            raise BafError("--quality applies to --recode jpeg; --recode hevc takes --qp")
        if args.qp is None:
            raise BafError("--recode hevc needs --qp 0..51")
        check_qp(args.qp)


def _check_bitstream_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations the bitstream path does not take, before anything heavy loads."""
    from baf.errors import BafError

    bitstream = args.codec is not None or args.all_channels
    if not bitstream:
        for flag, value in (("--qp", args.qp), ("--effort", args.effort), ("--restoration", args.restoration),
                            ("--save-bitstreams", args.save_bitstreams)):
            if value is not None:
                raise BafError(f"{flag} needs --codec (or --all-channels)")
        return
    if args.mode != "baseline":
        raise BafError("--codec and --all-channels replace --split-only; use one of them")
    if args.all_channels:
        if args.predictor is not None or args.restoration is not None or args.channels is not None:
            raise BafError("--all-channels sends every channel: no --predictor, --restoration or --channels")
        if args.codec not in (None, "hevc"):
            raise BafError(f"--all-channels codes with hevc, not {args.codec}")
    elif (args.predictor is None) == (args.restoration is None):
        raise BafError("--codec needs one restoration: --predictor CKPT or --restoration zeros")
    if args.record and args.qp is not None:
        raise BafError("--record stores lossless scores only; drop --qp")


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
        "--size", type=positive_int, default=512, help="input size, a multiple of 32 (default: %(default)s)"
    )
    p.add_argument("--conf-thres", type=unit_float, default=0.001, help="default: %(default)s")
    p.add_argument("--nms-iou", type=unit_float, default=0.45, help="default: %(default)s")
    p.add_argument(
        "--max-det", type=positive_int, default=300, help="detections kept per image (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="default: %(default)s")
    p.add_argument(
        "--weights",
        type=Path,
        default=os.environ.get("BAF_WEIGHTS"),
        help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images (by image id)")
    p.add_argument("--predictor", type=Path, help="BaF checkpoint (.json or .safetensors): send only --channels "
                   "ranked channels at --bits, restore the rest")
    p.add_argument("--channels", type=positive_int,
                   help="C, with --predictor or --codec (default: 64)")
    p.add_argument("--ranking", type=Path,
                   help="ranking file, with --predictor or --codec (default: the packaged one for the model and layer)")
    p.add_argument("--bits", type=positive_int, default=8,
                   help="n, with --predictor, --codec or --all-channels (default: %(default)s)")
    p.add_argument("--codec", help="send Z through real .baf bitstreams with this payload codec: jxl, hevc, png")
    p.add_argument("--qp", type=int, help="hevc QP 0..51: of the payload with --codec hevc (default: lossless), "
                   "or of the image with --recode hevc")
    p.add_argument("--effort", type=int, help="jxl effort 1..9 (default: 7)")
    p.add_argument("--restoration", choices=("zeros",),
                   help="with --codec and no --predictor: the missing channels are zero")
    p.add_argument("--all-channels", action="store_true",
                   help="send all P channels at --bits with hevc at --qp, no predictor (the paper's comparison)")
    p.add_argument("--save-bitstreams", type=Path, metavar="DIR",
                   help="with --codec or --all-channels: also write each image's .baf here")
    p.add_argument("--recode", choices=("jpeg", "hevc"),
                   help="cloud-only baseline: scale each image to --size, code it (jpeg at --quality, hevc intra "
                   "at --qp), decode, run the unsplit model")
    p.add_argument("--quality", type=int, help="JPEG quality 1..100, with --recode jpeg")
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
    _check_recode_flags(args)
    if args.ranking is not None and args.predictor is None and args.codec is None and not args.all_channels:
        raise BafError("--ranking needs --predictor, --codec or --all-channels")
    if args.recode is None:
        _check_bitstream_flags(args)
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
    bitstream = args.codec is not None or args.all_channels
    compressed = args.predictor is not None or bitstream
    cut = None if args.mode == "baseline" and not compressed else split(model, layer)
    channels = 64 if args.channels is None else args.channels
    transform, mode, predictor = None, None, None
    if compressed:
        from baf.ranking import find_ranking

        ranking = find_ranking(spec.name, layer, args.ranking)
    if args.predictor is not None:
        from baf.predictor import load_predictor, record_eval, z_transform

        predictor = load_predictor(args.predictor, model=spec.name, layer=layer, ranking_id=ranking.id)
        try:
            predictor.check_serves(channels, args.bits)
        except ValueError as e:
            raise BafError(f"--predictor {args.predictor}: {e}") from None
        transform = None if bitstream else z_transform(predictor, channels, args.bits)
        mode = f"{predictor.config.kind} C={channels} n={args.bits}"
    dataset = CocoDataset.open(args.data, args.limit)
    if args.recode is not None:
        from baf.recode import Recoder, evaluate_recoded

        recoder = Recoder(args.recode, quality=args.quality, qp=args.qp, size=settings.size)
        result = evaluate_recoded(model, dataset, spec.category_ids, recoder, settings=settings)
    elif bitstream:
        from baf.roundtrip import evaluate_bitstream

        codec = "hevc" if args.all_channels else args.codec
        if args.all_channels:
            channels, mode = cut.channels, f"all-channels n={args.bits}"
        mode = f"{mode or f'zeros C={channels} n={args.bits}'} {codec}" + ("" if args.qp is None else f" qp={args.qp}")
        if args.save_bitstreams is not None:
            args.save_bitstreams.mkdir(parents=True, exist_ok=True)
        result = evaluate_bitstream(
            cut, ranking, dataset, spec.category_ids, channels=channels, bits=args.bits, codec=codec, qp=args.qp,
            effort=args.effort, predictor=predictor, predictor_path=args.predictor, mode=mode, settings=settings,
            save_dir=args.save_bitstreams,
        )  # fmt: skip
    else:
        result = evaluate(model, dataset, spec.category_ids, split=cut, z_transform=transform, mode=mode,
                          settings=settings)
    rows = [
        ("model", result.model),
        ("mode", result.mode),
        ("split layer", "-" if result.split_layer is None else str(result.split_layer)),
        ("size", str(settings.size)),
        ("images", str(result.images)),
    ]
    rows += [(name, f"{value:.4f}") for name, value in result.stats.items() if name in ("AP", "AP50", "AP75")]
    if result.rate is not None and result.rate.recode is not None:
        r = result.rate
        level = f"q={r.quality}" if r.recode == "jpeg" else f"qp={r.qp}"
        rows += [
            ("recode", f"{r.recode} {level}, long side {settings.size}"),
            ("mean bytes", f"{r.mean_bytes:,.0f} (coded image)"),
            ("JPEG mean bytes", f"{r.jpeg_mean_bytes:,.0f}"),
            ("saved vs JPEG", f"{100 * r.saved_vs_jpeg:.1f}%"),
        ]
    elif result.rate is not None:
        r = result.rate
        rows += [
            ("channels, bits", f"C={r.channels} n={r.bits}"),
            ("codec", " ".join([r.codec, *(f"{k}={v}" for k, v in (("qp", r.qp), ("effort", r.effort)) if v)])),
            ("restoration", r.restoration),
            ("mean bytes", f"{r.mean_bytes:,.0f} (whole bitstream)"),
            ("JPEG mean bytes", f"{r.jpeg_mean_bytes:,.0f}"),
            ("saved vs JPEG", f"{100 * r.saved_vs_jpeg:.1f}%"),
        ]
        if r.predictor_sha256 is not None:
            rows.append(("predictor", f"{r.predictor} sha256 {r.predictor_sha256[:16]} steps {r.predictor_steps}"))
    rows += [(f"{stage} ms/frame", f"{ms:.1f}") for stage, ms in result.timings_ms.items()]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    if args.json:
        write_json(result, args.json)
    if args.record and args.predictor is not None:
        entry = {"dataset": args.data.name, "images": result.images, "channels": channels, "bits": args.bits,
                 "size": settings.size, "AP": round(result.ap, 4), "AP50": round(result.ap50, 4)}
        record_eval(args.predictor, str(predictor.source_sha256), entry)
    return 0
