"""Payload codecs on real yolov3-tiny layer-8 features: bytes per frame and encode/decode time.

Rows, all through the real edge encoder and cloud decoder (`baf.edge`, `baf.cloud`), bytes counted
over the whole bitstream (header and side info included):
- val164 images, every C in --channels and n in --bits: jxl effort 7, jxl effort 2, png (lossless);
- val164 images at C=--hevc-channels, n in {6, 8}: hevc intra (one ffmpeg per frame) lossless and at each QP;
- the cost of spawning ffmpeg per frame: hevc intra per frame vs a long-lived encoder with an IDR every frame;
- consecutive vtest.avi frames at C=--hevc-channels: jxl effort 7, hevc long-lived all-intra, hevc inter.
Encode = quantize + tile + codec + pack; decode = parse + codec + untile + dequantize. Times are
medians over frames (the first frame of a long-lived process is excluded by the median, not dropped).
"saved" compares with the mean source JPEG of the same frames (val164: the files themselves, the
paper's cloud-only reference; vtest: each frame as a Pillow JPEG at quality 90).
Lossy HEVC rows say nothing about accuracy; AP comes from `baf eval`.

    python bench/codecs.py [--images 16] [--video-frames 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from baf.cloud import FrameDecoder
from baf.codecs.hevc import HevcStreamEncoder
from baf.edge import EdgeEncoder
from baf.images import Letterbox, load_image
from baf.models.zoo import load_split
from baf.ranking import load_ranking
from baf.sources import open_source
from client.demo import DEMO_CLIP as VTEST  # Debian opencv-doc's clip, installed by `make sysdeps`

REPO = Path(__file__).resolve().parents[1]
VAL164 = REPO.parent / "shared" / "data" / "coco-val164" / "images"
QPS = (22, 27, 32, 37)
Features = list[tuple[np.ndarray, Letterbox]]


@dataclass(frozen=True)
class Row:
    data: str
    codec: str
    mode: str
    channels: int
    bits: int
    mean_bytes: float
    bits_per_element: float
    saved: float  # vs the mean source JPEG of the same frames
    encode_ms: float
    decode_ms: float


def measure(
    data: str, codec: str, mode: str, encoder: EdgeEncoder, features: Features, jpeg_bytes: float,
    decoder: FrameDecoder | None = None,
) -> Row:
    """Encode every frame with `encoder` (features cut to its C), decode in order with one decoder."""
    c = encoder.channels
    sizes, enc_ms, dec_ms = [], [], []
    with encoder, decoder or FrameDecoder() as dec:
        for z, box in features:
            start = time.perf_counter()
            bitstream = encoder.encode_features(z[:c], box)
            middle = time.perf_counter()
            dec.decode(bitstream)
            enc_ms.append(1000 * (middle - start))
            dec_ms.append(1000 * (time.perf_counter() - middle))
            sizes.append(len(bitstream))
    mean = statistics.fmean(sizes)
    elements = c * features[0][0].shape[1] * features[0][0].shape[2]
    return Row(data, codec, mode, c, encoder.bits, mean, 8 * mean / elements, 1 - mean / jpeg_bytes,
               statistics.median(enc_ms), statistics.median(dec_ms))  # fmt: skip


def _long_lived_intra(encoder: EdgeEncoder, bits: int, qp: int | None) -> EdgeEncoder:
    """`encoder` with its codec swapped for one long-lived x265 process that makes every frame an IDR."""
    encoder.codec = HevcStreamEncoder(bits=bits, qp=qp, keyint=1)
    return encoder


def image_rows(make: Callable[..., EdgeEncoder], feats: Features, jpeg: float, args: argparse.Namespace) -> list[Row]:
    rows = []
    for c in args.channels:
        for n in args.bits:
            for label, codec, effort in (("jxl e7", "jxl", 7), ("jxl e2", "jxl", 2), ("png", "png", None)):
                rows.append(measure("val164", label, "intra", make(channels=c, bits=n, codec=codec, effort=effort),
                                    feats, jpeg))
                _progress(rows[-1])
    c = args.hevc_channels
    for n in (6, 8):
        for qp in (None, *QPS):
            label = "hevc lossless" if qp is None else f"hevc qp {qp}"
            rows.append(measure("val164", label, "intra, ffmpeg per frame", make(channels=c, bits=n, codec="hevc",
                                qp=qp), feats, jpeg))  # fmt: skip
            _progress(rows[-1])
    rows.append(measure("val164", "hevc qp 27", "intra, long-lived", _long_lived_intra(
        make(channels=c, bits=8, codec="hevc", qp=27), 8, 27), feats, jpeg))  # fmt: skip
    _progress(rows[-1])
    return rows


def video_rows(make: Callable[..., EdgeEncoder], feats: Features, jpeg: float, args: argparse.Namespace) -> list[Row]:
    rows = []
    c = args.hevc_channels
    for n in (6, 8):
        rows.append(measure("vtest", "jxl e7", "intra", make(channels=c, bits=n, codec="jxl", effort=7), feats, jpeg))
        _progress(rows[-1])
        for qp in (None, *QPS):
            label = "hevc lossless" if qp is None else f"hevc qp {qp}"
            rows.append(measure("vtest", label, "intra, long-lived",
                                _long_lived_intra(make(channels=c, bits=n, codec="hevc", qp=qp), n, qp), feats, jpeg))
            _progress(rows[-1])
            rows.append(measure("vtest", label, "inter, long-lived",
                                make(channels=c, bits=n, codec="hevc", qp=qp, stream=True), feats, jpeg))
            _progress(rows[-1])
    return rows


def _progress(row: Row) -> None:
    print(f"  {row.data} {row.codec} {row.mode} C={row.channels} n={row.bits}: {row.mean_bytes:,.0f} B",
          file=sys.stderr, flush=True)


def _jpeg_bytes(image: np.ndarray, quality: int = 90) -> int:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.tell()


def print_table(rows: Sequence[Row], header: str) -> None:
    print(header)
    print(f"{'data':<7}{'codec':<14}{'mode':<24}{'C':>4}{'n':>3}{'bytes':>10}{'bits/el':>9}{'saved':>8}"
          f"{'enc ms':>8}{'dec ms':>8}")
    for r in rows:
        print(f"{r.data:<7}{r.codec:<14}{r.mode:<24}{r.channels:>4}{r.bits:>3}{r.mean_bytes:>10,.0f}"
              f"{r.bits_per_element:>9.3f}{r.saved:>8.1%}{r.encode_ms:>8.1f}{r.decode_ms:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16, help="val164 images (by name) to measure (default: 16)")
    p.add_argument("--video-frames", type=int, default=20, help="consecutive vtest.avi frames (default: 20)")
    p.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--bits", type=int, nargs="+", default=list(range(2, 9)))
    p.add_argument("--hevc-channels", type=int, default=64, help="C of the hevc and video rows (default: 64)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    split = load_split("yolov3-tiny")
    ranking = load_ranking("yolov3-tiny", 8)
    widest = max(*args.channels, args.hevc_channels)
    features = EdgeEncoder(split, ranking, channels=widest, codec="raw")

    def make(**options: object) -> EdgeEncoder:
        return EdgeEncoder(split, ranking, **options)  # type: ignore[arg-type]

    paths = sorted(VAL164.glob("*.jpg"))[: args.images]
    image_feats = [features.features(load_image(p)) for p in paths]
    image_jpeg = statistics.fmean(p.stat().st_size for p in paths)
    rows = image_rows(make, image_feats, image_jpeg, args)
    video_jpeg = None
    if args.video_frames > 0:
        frames = [f.image for f in open_source(VTEST, max_frames=args.video_frames).frames()]
        video_jpeg = statistics.fmean(_jpeg_bytes(f) for f in frames)
        rows += video_rows(make, [features.features(f) for f in frames], video_jpeg, args)
    header = (
        f"yolov3-tiny layer 8, ranking {ranking.id}; {len(paths)} val164 images, mean source JPEG "
        f"{image_jpeg:,.0f} bytes"
        + (f"; {args.video_frames} vtest.avi frames, mean JPEG q90 {video_jpeg:,.0f} bytes" if video_jpeg else "")
        + f"; torch threads {torch.get_num_threads()}; times are medians per frame (shared 2-core CPU: noisy)"
    )
    print_table(rows, header)
    if args.json:
        meta = {"images": len(paths), "image_jpeg_bytes": image_jpeg, "video_frames": args.video_frames,
                "video_jpeg_bytes": video_jpeg, "ranking_id": ranking.id}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
