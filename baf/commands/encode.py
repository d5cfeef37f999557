"""`baf encode`: run the edge half on an image, a folder of images or a video, and write `.baf` bitstreams.

An image gives one `.baf` file. A folder or a video gives a `.bafs` stream container, or one `.baf`
per frame when OUT ends with `/`. For a video, `--codec hevc` codes frames against earlier ones
through one long-lived encoder (`--intra` codes each frame on its own).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from baf.argtypes import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `encode` subcommand to `sub`."""
    p = sub.add_parser("encode", help="encode frames into .baf bitstreams (edge side)", description=__doc__)
    p.add_argument("source", help="image file, folder of images, video file or URL, or camera (/dev/video0)")
    p.add_argument("-o", "--output", required=True,
                   help="OUT.baf for an image; OUT.bafs for a folder or video, or OUT/ for one .baf per frame")
    p.add_argument("--model", default="yolov3-tiny", help="yolov3-tiny (default) or yolov3")
    p.add_argument("--layer", type=int, help="split layer (default: the model's)")
    p.add_argument("--ranking", type=Path, help="ranking file (default: the one packaged with the model)")
    p.add_argument("--channels", type=positive_int, default=64, help="C, channels sent (default: %(default)s)")
    p.add_argument("--bits", type=positive_int, default=8, help="n, bits per element (default: %(default)s)")
    p.add_argument("--codec", default="jxl", help="jxl (default), hevc, png or raw")
    p.add_argument("--effort", type=int, help="jxl effort 1..9 (default: 7)")
    p.add_argument("--qp", type=int, help="hevc QP 0..51 (default: lossless)")
    p.add_argument("--intra", action="store_true", help="hevc on a video: code every frame on its own")
    p.add_argument("--frames", type=positive_int, help="encode at most this many frames")
    p.add_argument("--size", type=positive_int, default=512, help="model input size (default: %(default)s)")
    p.add_argument("--weights", type=Path, default=os.environ.get("BAF_WEIGHTS"),
                   help="darknet .weights file (env BAF_WEIGHTS; default: the model's own)")
    p.set_defaults(run=run)


class _Output:
    """Where bitstreams go: one file, a stream container, or a folder of per-frame files."""

    def __init__(self, target: str, single: bool) -> None:
        from baf import bitstream
        from baf.errors import BafError

        self.folder = Path(target) if target.endswith(("/", os.sep)) else None
        path = self.folder or Path(target)
        parent = path if self.folder else path.parent
        if self.folder is None and not parent.is_dir():
            raise BafError(f"-o: folder {parent} does not exist")
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.path, self.single = path, single
        self._file = None if single or self.folder else path.open("wb")
        self._writer = bitstream.StreamWriter(self._file) if self._file else None

    def write(self, name: str, data: bytes) -> None:
        if self._writer is not None:
            self._writer.write(data)
        elif self.folder is not None:
            (self.folder / f"{name}.baf").write_bytes(data)
        else:
            self.path.write_bytes(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def run(args: argparse.Namespace) -> int:
    """Encode every frame of the source, print its bytes, then a summary."""
    import statistics
    import time

    import torch

    from baf.edge import EdgeConfig, EdgeEncoder
    from baf.errors import BafError
    from baf.rate import frame_rate
    from baf.sources import open_source

    source = open_source(args.source, max_frames=args.frames)
    single = source.kind == "image"
    if args.intra and args.codec != "hevc":
        raise BafError("--intra applies to hevc only (other codecs always code frames on their own)")
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    encoder = EdgeEncoder.load(EdgeConfig(
        model=args.model, layer=args.layer, weights=args.weights, ranking=args.ranking, channels=args.channels,
        bits=args.bits, codec=args.codec, effort=args.effort, qp=args.qp, size=args.size,
        stream=args.codec == "hevc" and source.kind == "video" and not args.intra,
    ))  # fmt: skip
    split = encoder.split
    out = _Output(args.output, single)
    sizes, bits_per_element, times_ms = [], [], []
    jpeg = source.files[0].stat().st_size if single and source.files[0].suffix.lower() in (".jpg", ".jpeg") else None
    try:
        with encoder:
            for frame in source.frames():
                start = time.perf_counter()
                data = encoder.encode(frame.image)
                times_ms.append(1000 * (time.perf_counter() - start))
                out.write(frame.name, data)
                rate = frame_rate(data)
                sizes.append(rate.total_bytes)
                bits_per_element.append(rate.bits_per_element)
                print(
                    f"{frame.name}: {rate.total_bytes:,} bytes (header {rate.header_bytes} + side info "
                    f"{rate.side_info_bytes} + payload {rate.payload_bytes:,}), "
                    f"{rate.bits_per_element:.3f} bits/element, {times_ms[-1]:.0f} ms"
                )
    finally:
        out.close()
    mode = "inter (stream)" if encoder.stream else "intra"
    codec = f"{args.codec} {'lossless' if encoder.codec.lossless else f'qp {encoder.codec.qp}'} {mode}"
    print(
        f"{out.path}: {len(sizes)} frame(s) of {args.model} layer {split.layer}, C={args.channels} of "
        f"{split.channels}, n={args.bits}, {codec}; mean {statistics.fmean(sizes):,.0f} bytes/frame, "
        f"{statistics.fmean(bits_per_element):.3f} bits/element, median {statistics.median(times_ms):.0f} ms/frame"
    )
    if jpeg is not None:
        ratio = sizes[0] / jpeg
        print(f"source JPEG {jpeg:,} bytes: the bitstream is {ratio:.1%} of it ({1 - ratio:.1%} saved)")
    return 0
