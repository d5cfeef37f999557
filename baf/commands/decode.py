"""`baf decode`: decode `.baf` bitstreams (cloud side): the transmitted channels, and detections.

`--tensor` saves the dequantized transmitted channels, [C,H,W] float32 for one frame and [N,C,H,W]
for a stream (sequence order). `--detections` restores all P channels (eq. 5-6) with the packaged predictor
checkpoint made for the frames' ranking (or --predictor; --restoration zeros leaves the missing channels at
zero), runs the cloud half and writes JSON with boxes in source-frame pixels. The ranking is the packaged one
whose id the first header carries, or --ranking.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from baf.argtypes import unit_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `decode` subcommand to `sub`."""
    p = sub.add_parser("decode", help="decode .baf bitstreams into features and detections (cloud side)",
                       description=__doc__)
    p.add_argument("file", type=Path, help=".baf file, .bafs stream, or folder of .baf files")
    p.add_argument("--tensor", type=Path, help="write the dequantized transmitted channels here (.npy)")
    p.add_argument("--detections", type=Path, help="write detections here (JSON)")
    p.add_argument("--ranking", type=Path,
                   help="ranking file or packaged name (default: the packaged ranking the header names)")
    p.add_argument("--restoration", choices=("predictor", "zeros"), default="predictor",
                   help="how --detections restores the missing channels (default: %(default)s)")
    p.add_argument("--predictor", type=Path,
                   help="predictor checkpoint (default: the packaged one for the ranking)")
    p.add_argument("--conf-thres", type=unit_float, default=0.25, help="default: %(default)s")
    p.add_argument("--nms-iou", type=unit_float, default=0.45, help="default: %(default)s")
    p.add_argument("--weights", type=Path, default=os.environ.get("BAF_WEIGHTS"),
                   help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Decode every frame in order; detections need the model named in the first header."""
    import itertools
    import json

    import numpy as np

    from baf import bitstream
    from baf.cloud import FrameDecoder, detections_json, is_stream_container, read_bitstreams
    from baf.errors import BafError

    for flag, path in (("--tensor", args.tensor), ("--detections", args.detections)):
        if path is not None and not path.parent.is_dir():
            raise BafError(f"{flag}: folder {path.parent} does not exist")
    if args.predictor is not None and args.restoration == "zeros":
        raise BafError("--predictor was given with --restoration zeros; choose one")
    bitstreams = read_bitstreams(args.file)
    first = next(bitstreams)
    pipeline = None
    if args.detections is not None:
        pipeline = detect_pipeline(args, bitstream.parse(first[1]).header)
    tensors, results = [], []
    with FrameDecoder(pipeline) as decoder:
        for name, data in itertools.chain([first], bitstreams):
            frame = decoder.decode(data)
            h = frame.header
            line = f"{name}: seq {h.sequence}, {h.channels}x{h.height}x{h.width} at n={h.bits}, {frame.size_bytes:,} B"
            if args.tensor is not None:
                tensors.append(frame.z)
            if pipeline is not None:
                dets = pipeline.detect([frame])[0]
                results.append({
                    "name": name, "sequence": h.sequence, "source_width": h.source_width,
                    "source_height": h.source_height, "detections": detections_json(dets, _category_ids(h.model)),
                })  # fmt: skip
                line += f", {len(dets)} detections"
            print(line)
    single = args.file.is_file() and not is_stream_container(args.file)
    if args.tensor is not None:
        if len({t.shape for t in tensors}) != 1:
            raise BafError("--tensor: frames have different C, H or W; decode them one file at a time")
        array = tensors[0] if single else np.stack(tensors)
        np.save(args.tensor, array)
        print(f"{args.tensor}: dequantized transmitted channels {list(array.shape)} float32")
    if pipeline is not None:
        checkpoint = getattr(pipeline.restorer, "source_sha256", None)
        report = {"model": pipeline.split.model.name, "split_layer": pipeline.split.layer,
                  "ranking_id": pipeline.ranking.id, "restoration": pipeline.restoration,
                  "checkpoint_sha256": checkpoint, "conf_threshold": args.conf_thres, "nms_iou": args.nms_iou,
                  "frames": results}  # fmt: skip
        args.detections.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{args.detections}: {sum(len(r['detections']) for r in results)} detections in {len(results)} frame(s), "
              f"restoration {pipeline.restoration}")
    return 0


def detect_pipeline(args: argparse.Namespace, header: Any) -> Any:
    """The cloud pipeline for the frames: their model and ranking, restored as --restoration says."""
    from baf.cloud import CloudPipeline, DetectSettings
    from baf.errors import BafError
    from baf.models.zoo import load_split
    from baf.predictor import load_predictor, packaged_checkpoint
    from baf.ranking import find_ranking, packaged_rankings

    split = load_split(header.model, header.split_layer, args.weights)
    if args.ranking is not None:
        ranking = find_ranking(split.model.name, split.layer, args.ranking)
    else:
        known = {r.id: r for r in packaged_rankings(split.model.name, split.layer)}
        if header.ranking_hex not in known:
            raise BafError(f"ranking {header.ranking_hex} of the first frame is not packaged; pass --ranking FILE")
        ranking = known[header.ranking_hex]
    predictor = None
    if args.restoration == "predictor":
        path = args.predictor or packaged_checkpoint(split.model.name, split.layer, ranking.id)
        predictor = load_predictor(path, model=split.model.name, layer=split.layer, ranking_id=ranking.id)
    settings = DetectSettings(conf_threshold=args.conf_thres, iou_threshold=args.nms_iou)
    return CloudPipeline(split, ranking, restorer=predictor, settings=settings)


def _category_ids(model: str) -> tuple[int, ...]:
    from baf.models.zoo import get_spec

    return get_spec(model).category_ids
