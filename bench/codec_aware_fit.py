"""Lever check: the linear path fitted on channels that went through HEVC intra at one QP (codec-aware fit).

The fits on n-bit inputs (`baf fit-linear --quantized-fits`) gain most where the quantization noise is
largest, so this asks whether the same holds for the lossy codec's noise. For --max-images training images
(spread evenly over the cached ones, the last --heldout left out as in `baf fit-linear`), each image's first
C ranked channels go through the real edge encoder (quantize to n bits, tile, HEVC intra at --qp, bitstream)
and the cloud's frame decoder; the normal equations map those decoded channels to the unquantized Z of all
P channels. The solution replaces the base (unquantized) C fit of --predictor, written as a new checkpoint
at --out. Score it against the original on the same configuration:

    python bench/codec_aware_fit.py --predictor baf/checkpoints/yolov3-tiny_l8_linear_c8-128_k9.json \
        --channels 128 --bits 6 --qp 40 --max-images 500 --out runs/codecfit/c128_n6_qp40
    baf eval --data ../shared/data/coco-val164 --predictor runs/codecfit/c128_n6_qp40.json \
        --channels 128 --bits 6 --codec hevc --qp 40

The feature cache is the one `baf train` / `baf fit-linear` fill (default cache/yolov3-tiny_l8_s512).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baf import ops
from baf.cli import guarded, setup_logging
from baf.cloud import FrameDecoder
from baf.edge import EdgeEncoder
from baf.errors import BafError
from baf.images import Letterbox
from baf.models.zoo import load_split
from baf.predictor import NormalEquations, load_predictor, save_predictor
from baf.ranking import find_ranking
from baf.train import FeatureCache, feature_batches

log = logging.getLogger("codec_aware_fit")


def run(args: argparse.Namespace) -> int:
    """Fit, write the checkpoint, print the mean bytes and the decoded tiles' error in quantizer levels."""
    torch.set_num_threads(args.threads)
    predictor = load_predictor(args.predictor)
    config = predictor.config
    if config.kind != "linear":
        raise BafError(f"{args.predictor}: a {config.kind} predictor; this check refits a linear one")
    if args.channels not in config.channels:
        raise BafError(f"--channels {args.channels}: {args.predictor} serves C {list(config.channels)}")
    cache = FeatureCache.open(args.cache)
    n_train = len(cache.names) - args.heldout
    if n_train < 1:
        raise BafError(f"--heldout {args.heldout} leaves no training images out of {len(cache.names)}")
    split = load_split(config.model, config.layer)
    encoder = EdgeEncoder(split, find_ranking(config.model, config.layer), channels=args.channels,
                          bits=args.bits, codec="hevc", qp=args.qp)  # fmt: skip
    decoder = FrameDecoder()
    size = int(cache.z.shape[-1]) * split.feature_stride
    box = Letterbox.fit(size, size, size)
    eqs = NormalEquations(args.channels, config.linear_kernel, config.out_channels)
    basis = predictor.basis
    sizes, level_mse = [], []
    start = time.monotonic()
    try:
        for z in feature_batches(cache, range(n_train), args.max_images, batch=1):
            sent = encoder.select(z[0])
            frame = decoder.decode(encoder.encode_features(sent, box))
            q_sent, _, _ = ops.quantize(sent, args.bits)
            level_mse.append(float(((frame.q.astype(np.float64) - q_sent) ** 2).mean()))
            sizes.append(frame.size_bytes)
            eqs.add(z, basis, torch.from_numpy(frame.z)[None])
            if len(sizes) % 100 == 0:
                log.info("images=%d mean bytes %.0f", len(sizes), np.mean(sizes))
    finally:
        encoder.close()
        decoder.close()
    weight, bias = eqs.solve(args.channels, args.ridge)
    weight_name, bias_name = predictor.linear_names(args.channels, None)
    getattr(predictor, weight_name).copy_(weight)
    getattr(predictor, bias_name).copy_(bias)
    seconds = time.monotonic() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_predictor(predictor, args.out, {"train": {
        "data_id": cache.data_id, "command": shlex.join(["python", *sys.argv]), "images": len(sizes),
        "samples": eqs.samples, "ridge": args.ridge, "wall_hours": round(seconds / 3600, 4), "steps": 0,
        "codec_fit": {"channels": args.channels, "bits": args.bits, "codec": "hevc", "qp": args.qp},
    }})  # fmt: skip
    print(f"{args.out}.json: C={args.channels} n={args.bits} hevc QP {args.qp} fit on {len(sizes)} images in "
          f"{seconds:.0f} s; mean bytes {np.mean(sizes):,.0f}; decoded tile error {np.mean(level_mse):.2f} levels^2")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python bench/codec_aware_fit.py`; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictor", type=Path, required=True, help="linear checkpoint whose C fit is replaced")
    p.add_argument("--channels", type=int, required=True, help="C (one the predictor serves)")
    p.add_argument("--bits", type=int, required=True, help="n of the coded channels")
    p.add_argument("--qp", type=int, required=True, help="HEVC QP")
    p.add_argument("--cache", type=Path, default=Path("cache/yolov3-tiny_l8_s512"), help="default: %(default)s")
    p.add_argument("--max-images", type=int, default=500, help="default: %(default)s")
    p.add_argument("--heldout", type=int, default=100, help="last N cached images left out (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-4, help="relative ridge (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint stem to write")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.max_images < 1 or args.threads < 1:
        p.error("--max-images and --threads must be >= 1")
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
