"""`baf info`: the header fields and sizes of a `.baf` file, or one line per frame of a `.bafs` stream or folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand to `sub`."""
    p = sub.add_parser("info", help="show what a .baf / .bafs file holds", description=__doc__)
    p.add_argument("file", type=Path, help=".baf file, .bafs stream, or folder of .baf files")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Parse every bitstream (no payload decoding) and print its fields."""
    import statistics

    from baf import bitstream
    from baf.cloud import is_stream_container, read_bitstreams
    from baf.rate import frame_rate

    frames = [(name, data, bitstream.parse(data).header, frame_rate(data)) for name, data in read_bitstreams(args.file)]
    if not args.file.is_dir() and not is_stream_container(args.file):
        _, _, h, r = frames[0]
        mode = "lossless" if h.lossless else f"lossy qp {h.qp}"
        rows = [
            ("file", str(args.file)),
            ("format", f"baf v{bitstream.VERSION}"),
            ("model", f"{h.model}, split layer {h.split_layer}"),
            ("ranking", h.ranking_hex),
            ("channels", f"C={h.channels} of P={h.channels_total}, n={h.bits} bits"),
            ("features", f"{h.height}x{h.width} per channel, tiled {h.tile_shape[0]}x{h.tile_shape[1]}"),
            ("codec", f"{h.codec_name}, {mode}, {'inter' if h.inter else 'intra'}"),
            ("sequence", str(h.sequence)),
            ("source", f"{h.source_width}x{h.source_height}, letterbox scale {h.scale:.6g} "
                       f"pad ({h.pad_x:g}, {h.pad_y:g})"),
            ("bytes", f"{r.total_bytes:,} total = header {r.header_bytes} + side info {r.side_info_bytes} "
                      f"+ payload {r.payload_bytes:,}"),
            ("rate", f"{r.bits_per_element:.4f} bits/element over {r.elements:,} elements"),
        ]  # fmt: skip
        for key, value in rows:
            print(f"{key:<10}{value}")
        return 0
    print(f"{'frame':<22}{'seq':>6}  {'codec':<16}{'type':<6}{'C':>4}{'n':>3}{'total':>9}{'payload':>9}{'bits/el':>9}")
    for name, _, h, r in frames:
        codec = f"{h.codec_name} {'lossless' if h.lossless else f'qp {h.qp}'}"
        print(f"{name:<22}{h.sequence:>6}  {codec:<16}{'P' if h.inter else 'I':<6}{h.channels:>4}{h.bits:>3}"
              f"{r.total_bytes:>9,}{r.payload_bytes:>9,}{r.bits_per_element:>9.4f}")
    first = frames[0][2]
    total = sum(r.total_bytes for *_, r in frames)
    intra = sum(1 for _, _, h, _ in frames if not h.inter)
    print(
        f"{args.file}: {len(frames)} frames ({intra} intra) of {first.model} layer {first.split_layer}, "
        f"ranking {first.ranking_hex}, source {first.source_width}x{first.source_height}; {total:,} bytes, "
        f"mean {total / len(frames):,.0f} bytes/frame, "
        f"{statistics.fmean(r.bits_per_element for *_, r in frames):.4f} bits/element"
    )
    return 0
