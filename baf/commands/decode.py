"""`baf decode`: decode `.baf` bitstreams (cloud side): the transmitted channels, and detections.

`--tensor` saves the dequantized transmitted channels, [C,H,W] float32 for one frame and [N,C,H,W]
for a stream (ranking order). `--detections` runs the cloud half on the restored features and writes
JSON with boxes in source-frame pixels; the restoration is `zeros` (missing channels zero) until a
BaF predictor is plugged in.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from baf.argtypes import unit_float


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `decode` subcommand to `sub`."""
    p = sub.add_parser("decode", help="decode .baf bitstreams into features and detections (cloud side)",
                       description=__doc__)
    p.add_argument("file", type=Path, help=".baf file, .bafs stream, or folder of .baf files")
    p.add_argument("--tensor", type=Path, help="write the dequantized transmitted channels here (.npy)")
    p.add_argument("--detections", type=Path, help="write detections here (JSON)")
    p.add_argument("--ranking", type=Path, help="ranking file (default: the one packaged with the model)")
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
    from baf.cloud import (
        CloudPipeline, DetectSettings, FrameDecoder, detections_json, is_stream_container, read_bitstreams,
    )
    from baf.errors import BafError

    for flag, path in (("--tensor", args.tensor), ("--detections", args.detections)):
        if path is not None and not path.parent.is_dir():
            raise BafError(f"{flag}: folder {path.parent} does not exist")
    bitstreams = read_bitstreams(args.file)
    first = next(bitstreams)
    pipeline = None
    if args.detections is not None:
        header = bitstream.parse(first[1]).header
        settings = DetectSettings(conf_threshold=args.conf_thres, iou_threshold=args.nms_iou)
        pipeline = CloudPipeline.load(header.model, header.split_layer, args.weights, args.ranking, settings=settings)
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
        report = {"model": pipeline.split.model.name, "split_layer": pipeline.split.layer,
                  "ranking_id": pipeline.ranking.id, "restoration": pipeline.restoration,
                  "conf_threshold": args.conf_thres, "nms_iou": args.nms_iou, "frames": results}  # fmt: skip
        args.detections.write_text(json.dumps(report, indent=1) + "\n")
        print(f"{args.detections}: {sum(len(r['detections']) for r in results)} detections in {len(results)} frame(s), "
              f"restoration {pipeline.restoration}")
    return 0


def _category_ids(model: str) -> tuple[int, ...]:
    from baf.models.zoo import get_spec

    return get_spec(model).category_ids
