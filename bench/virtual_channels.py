"""Lever check: send C ranked channels plus k "virtual" channels (fixed linear combinations of all P channels).

The paper sends the first C ranked channels of Z and restores the rest. Every sent channel is a unit vector
over the P channels; a fixed direction v (a 1x1 conv at the edge, k*P multiplies per position) can carry more
of what the cloud cannot predict. The k directions are the principal axes of the restoration residual: fit the
k x k least-squares map from the C ranked channels to all P (as `baf fit-linear` does), take the covariance
of Z minus that prediction over the training images, keep its top k eigenvectors (C=0: the covariance of Z
itself, a plain KLT). The restoration is then refitted with the C + k sent channels as its inputs. The fits and
directions are `baf.residual_ranking`'s, which `baf rank --method residual-pca` ships; this check also scores
un-nested mixes and HEVC, on fits it makes itself.

Each configuration RANKED:VIRTUAL:BITS is scored on the evaluation folder like `baf eval --codec jxl`: the
sent channels go through the edge encoder's `.baf` bitstream (eq. 4 per channel, fp16 min/max side info,
tiled, lossless JPEG XL) and the cloud's frame decoder; bytes are whole bitstreams; eq. 6 clamps the ranked
channels.
Fits at n <= 3 use n-bit inputs, as the shipped checkpoint's `--quantized-fits 2,3` do. Example (val164,
5x5, 500 training images, about 15 minutes on two threads):

    python bench/virtual_channels.py --data ../shared/data/coco-val164 --kernel 5 --fit-images 500 \
        --configs 64:0:8,48:16:8,32:32:8,0:64:8,64:0:4,48:16:4,32:32:4,64:0:2,48:16:2,32:32:2 \
        --out results/evals/levers/virtual_channels_k5.json

One checkpoint serves every C only if the sent channels are nested, so --nested builds one sequence for a list
of C: each block up to the next C takes the next ranked channels and, for --share of the block, the residual
directions given everything before it; each C is then scored as the first C rows of that sequence:

    python bench/virtual_channels.py --data ../shared/data/coco-val164 --kernel 5 --fit-images 500 \
        --nested 8,16,32,64,128 --nested-bits 8,4,2 --out results/evals/levers/virtual_channels_nested_k5.json

The feature cache is the one `baf train` / `baf fit-linear` fill (default cache/yolov3-tiny_l8_s512).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from baf import ops
from baf.basis import SentBasis
from baf.bitstream import MAX_QP
from baf.cli import guarded, setup_logging
from baf.cloud import FrameDecoder
from baf.edge import EdgeEncoder
from baf.errors import BafError
from baf.evaluate import CocoDataset, evaluate
from baf.images import Letterbox
from baf.models.split import Split
from baf.models.zoo import get_spec, load_split
from baf.ranking import Ranking, find_ranking
from baf.residual_ranking import fit_restoration, nested_sequence, residual_directions
from baf.train import FeatureCache, feature_batches

log = logging.getLogger("virtual_channels")
QUANTIZED_FITS = (2, 3)  # n values whose restoration is fitted on n-bit inputs, as in the shipped checkpoint


@dataclass(frozen=True)
class Config:
    """One sent tensor: the first `ranked` ranked channels, then `virtual` residual directions, at `bits`;
    coded with lossless JPEG XL, or HEVC intra at `qp`."""

    ranked: int
    virtual: int
    bits: int
    qp: int | None = None

    @property
    def width(self) -> int:
        """Channels sent."""
        return self.ranked + self.virtual

    @classmethod
    def parse(cls, text: str) -> Config:
        """`RANKED:VIRTUAL:BITS[:QP]`, e.g. 48:16:8 (JPEG XL) or 48:16:8:37 (HEVC intra at QP 37)."""
        try:
            ranked, virtual, bits, *qp = (int(v) for v in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected RANKED:VIRTUAL:BITS[:QP], got {text!r}") from None
        if ranked < 0 or virtual < 0 or ranked + virtual < 1 or not 1 <= bits <= 8 or len(qp) > 1:
            raise argparse.ArgumentTypeError(f"{text!r}: need RANKED, VIRTUAL >= 0, some channel, BITS in 1..8")
        if qp and not 0 <= qp[0] <= MAX_QP:
            raise argparse.ArgumentTypeError(f"{text!r}: QP must be in 0..{MAX_QP}")
        return cls(ranked, virtual, bits, qp[0] if qp else None)


class Fitter:
    """Least-squares restorations from sent channels to all P, over the cached training features
    (`baf.residual_ranking` does the fitting)."""

    def __init__(self, split: Split, ranking: Ranking, cache: FeatureCache, kernel: int, images: int,
                 heldout: int, ridge: float) -> None:
        n_train = len(cache.names) - heldout
        if n_train < 1:
            raise BafError(f"--heldout {heldout} leaves no training images out of {len(cache.names)}")
        self.split, self.ranking, self.cache = split, ranking, cache
        self.kernel, self.images, self.ridge = kernel, images, ridge
        self.indices = range(n_train)

    def batches(self) -> Iterator[Tensor]:
        """Float32 Z batches of the training images used for every fit."""
        return feature_batches(self.cache, self.indices, self.images, batch=8)

    def fit(self, basis: SentBasis, bits: int | None) -> tuple[Tensor, Tensor]:
        """(weight [P,W,k,k], bias [P]) of the k x k map from what `basis` sends (n-bit when `bits`) to all P."""
        return fit_restoration(self.batches, basis, self.kernel, self.ridge, bits)

    def flat(self, ranked: int, virtual: int) -> SentBasis:
        """The first `ranked` ranked channels, then `virtual` residual directions."""
        basis = SentBasis.ranked(self.ranking.order[:ranked], self.split.channels)
        if not virtual:
            return basis
        directions, _ = residual_directions(self.batches, basis, virtual, self.kernel, self.ridge)
        return basis + SentBasis.mixtures(directions)

    def nested(self, widths: Sequence[int], share: float) -> SentBasis:
        """One sequence whose first C rows serve each C in `widths` (`baf.residual_ranking.nested_sequence`)."""
        return nested_sequence(self.batches, self.ranking.order, widths, share, self.kernel, self.ridge)[0]


def score(split: Split, ranking: Ranking, dataset: CocoDataset, category_ids: list[int], basis: SentBasis, bits: int,
          qp: int | None, weight: Tensor, bias: Tensor) -> dict[str, Any]:
    """AP, AP50 and mean bytes of sending `basis` at n=`bits` (JPEG XL, or HEVC intra at `qp`) on `dataset`: each
    image's sent channels go through the edge encoder's bitstream and the cloud's frame decoder."""
    encoder = EdgeEncoder(split, ranking, channels=basis.width, bits=bits, codec="jxl" if qp is None else "hevc",
                          qp=qp)  # fmt: skip
    decoder = FrameDecoder()
    sizes: list[int] = []
    rows = [i for i, c in enumerate(basis.channels) if c >= 0]
    targets = [basis.channels[i] for i in rows]

    def transform(z: Tensor, boxes: object = ()) -> Tensor:
        side = int(z.shape[-1]) * split.feature_stride  # the header's placement; the bytes do not depend on it
        box = Letterbox.fit(side, side, side)
        out = []
        for s in basis.send(z.float()):
            frame = decoder.decode(encoder.encode_features(s.numpy(), box))
            sizes.append(frame.size_bytes)
            restored = F.conv2d(torch.from_numpy(frame.z)[None], weight, bias, padding=weight.shape[-1] // 2)[0]
            if rows:
                clamped = ops.clamp_to_bins(restored[targets].contiguous().numpy(), frame.q[rows], frame.lo[rows],
                                            frame.hi[rows], bits)  # fmt: skip
                restored[targets] = torch.from_numpy(clamped)
            out.append(restored)
        return torch.stack(out).to(z.dtype)

    try:
        result = evaluate(split.model, dataset, category_ids, split=split, z_transform=transform, progress=False)
    finally:
        encoder.close()
        decoder.close()
    return {"bits": bits, "codec": encoder.codec.name, "qp": qp, "AP": result.stats["AP"],
            "AP50": result.stats["AP50"], "mean_bytes": float(np.mean(sizes)), "images": result.images}  # fmt: skip


def jobs(args: argparse.Namespace, fitter: Fitter) -> Iterator[tuple[tuple[Any, ...], SentBasis, int, int | None]]:
    """(key, basis, n, QP) of every configuration to score, bases built as they are first needed."""
    flat: dict[tuple[int, int], SentBasis] = {}
    for config in args.configs:
        key = (config.ranked, config.virtual)
        if key not in flat:
            flat[key] = fitter.flat(*key)
        yield ("flat", *key), flat[key], config.bits, config.qp
    if args.nested:
        sequence = fitter.nested(args.nested, args.share)
        for width in args.nested:
            for bits, qp in args.nested_bits:
                yield ("nested", width), sequence.prefix(width), bits, qp


def run(args: argparse.Namespace) -> int:
    """Fit and score every configuration; print a table and write the JSON."""
    torch.set_num_threads(args.threads)
    split = load_split(args.model)
    ranking = find_ranking(args.model, split.layer)
    spec = get_spec(args.model)
    widest = max([c.width for c in args.configs] + (args.nested or [])[-1:])
    if widest > split.channels:
        raise BafError(f"a configuration sends {widest} channels; layer {split.layer} has {split.channels}")
    fitter = Fitter(split, ranking, FeatureCache.open(args.cache), args.kernel, args.fit_images, args.heldout,
                    args.ridge)  # fmt: skip
    dataset = CocoDataset.open(args.data, args.limit)
    fits: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}  # n >= 4 share the unquantized fit
    rows = []
    print(f"{'sequence':>8} {'C':>4} {'ranked':>6} {'virtual':>7} {'n':>2} {'QP':>3} {'mean bytes':>10} {'AP':>7} "
          f"{'AP50':>7}")  # fmt: skip
    for key, basis, bits, qp in jobs(args, fitter):
        start = time.monotonic()
        fit_bits = bits if bits in QUANTIZED_FITS else None
        if (*key, fit_bits) not in fits:
            fits[(*key, fit_bits)] = fitter.fit(basis, fit_bits)
        ranked = sum(c >= 0 for c in basis.channels)
        row = {"sequence": key[0], "channels": basis.width, "ranked": ranked, "virtual": basis.width - ranked,
               **score(split, ranking, dataset, spec.category_ids, basis, bits, qp, *fits[(*key, fit_bits)]),
               "seconds": round(time.monotonic() - start, 1)}  # fmt: skip
        rows.append(row)
        print(f"{key[0]:>8} {basis.width:>4} {ranked:>6} {basis.width - ranked:>7} {bits:>2} {qp or '-':>3} "
              f"{row['mean_bytes']:>10,.0f} {row['AP']:>7.4f} {row['AP50']:>7.4f}", flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"command": shlex.join(["python", *sys.argv]), "model": args.model, "layer": split.layer,
                  "ranking_id": ranking.id, "kernel": args.kernel, "fit_images": args.fit_images,
                  "share": args.share if args.nested else None, "data_id": fitter.cache.data_id,
                  "eval_data": str(args.data), "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def bits_qp(text: str) -> tuple[int, int | None]:
    """`BITS[:QP]` of --nested-bits."""
    config = Config.parse(f"0:1:{text}")
    return config.bits, config.qp


def widths(text: str) -> list[int]:
    """Ascending channel counts of --nested."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ascending channel counts, got {text!r}") from None
    if not values or values[0] < 1 or values != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected ascending channel counts >= 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """`python bench/virtual_channels.py`; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="COCO-style evaluation folder (e.g. val164)")
    p.add_argument("--configs", type=lambda s: [Config.parse(t) for t in s.split(",")], default=[],
                   help="comma-separated RANKED:VIRTUAL:BITS[:QP] (QP: HEVC intra instead of JPEG XL)")
    p.add_argument("--nested", type=widths, help="one nested sequence serving these C, e.g. 8,16,32,64,128")
    p.add_argument("--nested-bits", type=lambda s: [bits_qp(t) for t in s.split(",")], default=[(8, None)],
                   help="comma-separated BITS[:QP] each C of --nested is scored at (default: 8)")
    p.add_argument("--share", type=float, default=0.5,
                   help="virtual share of each --nested block (default: %(default)s)")
    p.add_argument("--limit", type=int, help="score only the first N evaluation images")
    p.add_argument("--model", default="yolov3-tiny", help="default: %(default)s")
    p.add_argument("--kernel", type=int, default=5, help="k of the k x k restoration (default: %(default)s)")
    p.add_argument("--fit-images", type=int, default=500, help="training images per fit (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=Path("cache/yolov3-tiny_l8_s512"), help="default: %(default)s")
    p.add_argument("--heldout", type=int, default=100, help="last N cached images left out (default: %(default)s)")
    p.add_argument("--ridge", type=float, default=1e-4, help="relative ridge (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    p.add_argument("--out", type=Path, help="JSON report to write")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    if args.fit_images < 1 or args.threads < 1 or args.kernel < 1 or args.kernel % 2 == 0:
        p.error("--fit-images and --threads must be >= 1, --kernel odd")
    if not args.configs and not args.nested:
        p.error("give --configs, --nested or both")
    if not 0 <= args.share <= 1:
        p.error("--share must be in 0..1")
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
