"""Video: what a cloud-only user sends (the clip as HEVC) vs our feature stream, by agreement with the unsplit model.

On the first --frames frames of a clip (default: Debian opencv-doc's vtest.avi, 768x576 at 10 fps):
- reference: the unsplit yolov3-tiny on the uncompressed frames, at the evaluator's defaults (conf 0.001,
  NMS IoU 0.45, 300 a frame); boxes scoring >= 0.5 are the pseudo ground truth (`baf.agreement`);
- hevc video: the frames scaled to long side 512 (Pillow LANCZOS, as `baf eval --recode`), coded as one
  libx265 stream (yuv420p, preset medium, x265's default GOP: keyint 250, 4 B-frames, lookahead 20;
  constant QP from --hevc-qps), decoded, unsplit model; bytes per frame = stream size / frames;
- feature stream: every frame through the real edge encoder and the hevc stream codec (inter, one
  long-lived x265, tune zerolatency, keyint 64) as the client sends it, decoded and restored by the
  cloud pipeline with --predictor, for each C:n:QP of --feature-configs; bytes per frame = mean
  whole-bitstream size (header and side info included). --ranking residual-pca sends virtual channels.
Score: AP50 of agreement, COCO AP at IoU 0.5 of each method's detections (same thresholds) against the
pseudo ground truth, over the 80 COCO classes. ms/frame: coding (encode + decode) and the whole method.

    python bench/video_baselines.py [--frames 100] [--hevc-qps 27,32,37,42,47]
        [--feature-configs 64:8:27,64:8:37,...] [--ranking NAME] [--predictor CKPT] [--source CLIP] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from baf.agreement import PSEUDO_GT_MIN_SCORE, agreement_ap50, detect_image, pseudo_ground_truth
from baf.cli import guarded, setup_logging
from baf.cloud import CloudPipeline, DetectSettings
from baf.edge import EdgeEncoder
from baf.errors import BafError
from baf.evaluate import EvalSettings
from baf.models.darknet import Darknet
from baf.models.detect import Detections
from baf.models.split import Split, split
from baf.models.zoo import get_spec, load_model
from baf.predictor import BafPredictor, load_predictor, packaged_checkpoint, read_sidecar
from baf.ranking import Ranking, find_ranking
from baf.recode import decode_hevc, encode_hevc_video, scale_to_long_side
from baf.sources import open_source
from client.demo import DEMO_CLIP  # Debian opencv-doc's clip, installed by `make sysdeps`

HEVC_QPS = (27, 32, 37, 42, 47)
FEATURE_CONFIGS = ((64, 8, 27), (64, 8, 37), (64, 8, 47), (32, 6, 37), (16, 6, 37))
MODEL = "yolov3-tiny"

log = logging.getLogger("bench.video_baselines")


@dataclass(frozen=True)
class Row:
    method: str
    setting: str
    bytes_per_frame: float
    kbps: float | None  # at the clip's frame rate
    ap50_agreement: float
    detections: int
    coding_ms_per_frame: float
    total_ms_per_frame: float


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _configs(text: str) -> tuple[tuple[int, int, int], ...]:
    configs = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            c, n, qp = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected C:n:QP items like 64:8:37, got {item!r}") from None
        configs.append((c, n, qp))
    return tuple(configs)


def _kbps(bytes_per_frame: float, fps: float | None) -> float | None:
    return None if fps is None else 8 * bytes_per_frame * fps / 1000


def hevc_row(model: Darknet, frames: Sequence[np.ndarray], reference: Sequence[Detections], qp: int,
             settings: EvalSettings, fps: float | None) -> Row:  # fmt: skip
    """The clip scaled to long side `settings.size`, coded as one HEVC stream at `qp`, decoded, unsplit model."""
    start = time.perf_counter()
    scaled = [scale_to_long_side(f, settings.size) for f in frames]
    data = encode_hevc_video(scaled, qp, fps=fps or 25.0)
    decoded = decode_hevc(data, scaled[0].shape[:2], len(scaled))
    coded = time.perf_counter()
    h, w = frames[0].shape[:2]
    dets = [detect_image(model, image, settings, source_size=(w, h)) for image in decoded]
    end = time.perf_counter()
    per_frame = len(data) / len(frames)
    return Row("hevc video", f"qp={qp}", per_frame, _kbps(per_frame, fps), agreement_ap50(reference, dets),
               sum(map(len, dets)), 1000 * (coded - start) / len(frames), 1000 * (end - start) / len(frames))


def feature_row(cut: Split, ranking: Ranking, predictor: BafPredictor, frames: Sequence[np.ndarray],
                reference: Sequence[Detections], config: tuple[int, int, int], settings: EvalSettings,
                fps: float | None) -> Row:  # fmt: skip
    """Each frame through the edge encoder and hevc stream codec at C, n, QP, then the cloud pipeline and predictor."""
    channels, bits, qp = config
    detect = DetectSettings(conf_threshold=settings.conf_threshold, iou_threshold=settings.iou_threshold,
                            max_detections=settings.max_detections)  # fmt: skip
    pipeline = CloudPipeline(cut, ranking, restorer=predictor, settings=detect)
    sizes, dets, coding_s = [], [], 0.0
    start = time.perf_counter()
    with EdgeEncoder(cut, ranking, channels=channels, bits=bits, codec="hevc", qp=qp, stream=True,
                     size=settings.size) as encoder, pipeline.stream() as decoder:  # fmt: skip
        for frame in frames:
            z, box = encoder.features(frame)
            t0 = time.perf_counter()
            data = encoder.encode_features(z, box)
            decoded = decoder.decode(data)
            coding_s += time.perf_counter() - t0
            sizes.append(len(data))
            dets.append(pipeline.detect([decoded])[0])
    end = time.perf_counter()
    per_frame = statistics.fmean(sizes)
    return Row("feature stream", f"C={channels} n={bits} qp={qp}", per_frame, _kbps(per_frame, fps),
               agreement_ap50(reference, dets), sum(map(len, dets)), 1000 * coding_s / len(frames),
               1000 * (end - start) / len(frames))  # fmt: skip


def print_table(rows: Sequence[Row], header: str) -> None:
    print(header)
    print(f"{'method':<16} {'setting':<20} {'bytes/frame':>11} {'kbit/s':>8} {'AP50 agree':>10} {'dets':>7} "
          f"{'coding ms':>9} {'total ms':>9}")  # fmt: skip
    for r in rows:
        kbps = "-" if r.kbps is None else f"{r.kbps:,.0f}"
        print(f"{r.method:<16} {r.setting:<20} {r.bytes_per_frame:>11,.0f} {kbps:>8} {r.ap50_agreement:>10.3f} "
              f"{r.detections:>7} {r.coding_ms_per_frame:>9.1f} {r.total_ms_per_frame:>9.1f}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.json and not args.json.parent.is_dir():
        raise BafError(f"--json: folder {args.json.parent} does not exist")
    settings = EvalSettings()
    spec = get_spec(MODEL)
    model = load_model(MODEL)
    cut = split(model, spec.split_layer)
    ranking = find_ranking(spec.name, cut.layer, args.ranking)
    args.predictor = args.predictor or packaged_checkpoint(spec.name, cut.layer, ranking.id)
    predictor = load_predictor(args.predictor, model=spec.name, layer=cut.layer, ranking_id=ranking.id)
    for channels, bits, _ in args.feature_configs:
        try:
            predictor.check_serves(channels, bits)
        except ValueError as e:
            raise BafError(f"--feature-configs {channels}:{bits}: --predictor {args.predictor}: {e}") from None
    source = open_source(args.source, max_frames=args.frames)
    if source.kind != "video":
        raise BafError(f"--source {args.source}: not a video")
    frames = [f.image for f in source.frames()]
    start = time.perf_counter()
    reference = [detect_image(model, frame, settings) for frame in frames]
    reference_ms = 1000 * (time.perf_counter() - start) / len(frames)
    truth = pseudo_ground_truth(reference)
    boxes = len(truth.dataset["annotations"])
    print(f"  reference: {boxes} boxes with score >= {PSEUDO_GT_MIN_SCORE} in {len(frames)} frames "
          f"({reference_ms:.0f} ms/frame)", file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for qp in args.hevc_qps:
        rows.append(hevc_row(model, frames, reference, qp, settings, source.fps))
        print(f"  {rows[-1].method} {rows[-1].setting}: {rows[-1].bytes_per_frame:,.0f} B/frame, "
              f"AP50 {rows[-1].ap50_agreement:.3f}", file=sys.stderr, flush=True)  # fmt: skip
    for config in args.feature_configs:
        rows.append(feature_row(cut, ranking, predictor, frames, reference, config, settings, source.fps))
        print(f"  {rows[-1].method} {rows[-1].setting}: {rows[-1].bytes_per_frame:,.0f} B/frame, "
              f"AP50 {rows[-1].ap50_agreement:.3f}", file=sys.stderr, flush=True)  # fmt: skip
    h, w = frames[0].shape[:2]
    header = (f"{Path(args.source).name}: {len(frames)} frames {w}x{h} at {source.fps or '?'} fps; reference: "
              f"unsplit {MODEL} on the uncompressed frames, {boxes} boxes with score >= {PSEUDO_GT_MIN_SCORE}")
    print_table(rows, header)
    if args.json:
        sidecar, _ = read_sidecar(args.predictor)
        report = {
            "source": str(args.source), "frames": len(frames), "width": w, "height": h, "fps": source.fps,
            "model": MODEL, "size": settings.size, "conf_threshold": settings.conf_threshold,
            "nms_iou": settings.iou_threshold, "max_detections": settings.max_detections,
            "pseudo_gt_min_score": PSEUDO_GT_MIN_SCORE, "reference_boxes": boxes,
            "reference_ms_per_frame": reference_ms,
            "ranking_id": ranking.id,
            "predictor": {"path": str(args.predictor), "sha256": predictor.source_sha256,
                          "steps": sidecar.get("train", {}).get("steps")
                          if sidecar.get("sha256") == predictor.source_sha256 else None},
            "hevc_video": "libx265 yuv420p preset medium, x265 default GOP, -x265-params qp=Q; frames scaled to long "
                          "side 512 with Pillow LANCZOS",
            "feature_stream": "EdgeEncoder(stream=True): HevcStreamEncoder tune zerolatency keyint 64, "
                              "CloudPipeline with the predictor",
            "rows": [asdict(r) for r in rows],
            "command": " ".join(sys.argv),
        }  # fmt: skip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python bench/video_baselines.py`; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=DEMO_CLIP, help="video (default: %(default)s)")
    p.add_argument("--frames", type=int, default=100, help="first N frames (default: %(default)s)")
    p.add_argument("--hevc-qps", type=_ints, default=HEVC_QPS, help="default: 27,32,37,42,47")
    p.add_argument("--feature-configs", type=_configs, default=FEATURE_CONFIGS,
                   help="C:n:QP items (default: 64:8:27,64:8:37,64:8:47,32:6:37,16:6:37)")
    p.add_argument("--ranking", type=Path, help="ranking file or packaged name (default: the paper's)")
    p.add_argument("--predictor", type=Path,
                   help="checkpoint (default: the packaged one the server uses for the ranking)")
    p.add_argument("--json", type=Path, help="write the rows and settings here")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.frames < 1:
        p.error("--frames must be >= 1")
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
