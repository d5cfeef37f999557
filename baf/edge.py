"""The edge encoder: one RGB frame in, one `.baf` bitstream out.

letterbox -> edge half (BN output Z of the split layer) -> the first C rows of the ranking's sequence (ranked
channels, and for a residual-pca ranking also virtual channels: fixed directions over all P, a 1x1 conv) ->
n-bit quantization (eq. 4) -> tile -> payload codec -> bitstream (`baf.bitstream`).
An `EdgeEncoder` serves one stream: it numbers the frames, and with `stream=True` (hevc only) keeps
one long-lived `HevcStreamEncoder` whose frames predict from earlier ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from baf import bitstream, codecs, ops
from baf.codecs import Codec
from baf.codecs.hevc import HevcStreamEncoder
from baf.errors import BafError, CodecError
from baf.images import Letterbox
from baf.models.split import Split, edge_image
from baf.ranking import Ranking, find_ranking

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EdgeConfig:
    """What an edge encoder sends: model and split, ranking, C channels at n bits, and how they are coded.

    `qp` applies to hevc only (None: lossless); `effort` to jxl only (None: the codec's default);
    `stream` (hevc only) codes each frame against earlier ones through one long-lived encoder.
    `ranking` is a ranking file, or None for the one packaged with the model.
    """

    model: str = "yolov3-tiny"
    layer: int | None = None
    weights: Path | None = None
    ranking: Path | None = None
    channels: int = 64
    bits: int = 8
    codec: str = "jxl"
    effort: int | None = None
    qp: int | None = None
    stream: bool = False
    size: int = 512


def build_codec(name: str, bits: int, *, effort: int | None = None, qp: int | None = None) -> Codec:
    """An intra codec `name` for n-bit values, refusing options that codec does not take."""
    codec = codecs.create(name, bits=bits)
    if effort is not None and codec.name != "jxl":
        raise CodecError(f"effort applies to jxl only, not {codec.name}")
    if qp is not None and not codec.supports_lossy:
        raise CodecError(f"{codec.name} is lossless only; qp applies to hevc")
    if effort is None and qp is None:
        return codec
    return codecs.create(name, bits=bits, **({"effort": effort} if effort is not None else {"qp": qp}))


class EdgeEncoder:
    """Turns RGB uint8 frames [H,W,3] of one stream into `.baf` bitstreams, numbered from `first_sequence`."""

    def __init__(
        self,
        split: Split,
        ranking: Ranking,
        *,
        channels: int = 64,
        bits: int = 8,
        codec: str = "jxl",
        effort: int | None = None,
        qp: int | None = None,
        stream: bool = False,
        size: int = 512,
        first_sequence: int = 0,
    ) -> None:
        name = split.model.name
        if (ranking.model, ranking.layer, ranking.channels) != (name, split.layer, split.channels):
            raise BafError(
                f"ranking {ranking.id} orders {ranking.model} layer {ranking.layer} ({ranking.channels} channels), "
                f"not {name} layer {split.layer} ({split.channels} channels)"
            )
        if not 1 <= channels <= split.channels:
            raise BafError(f"channels: C={channels} must be in 1..{split.channels} (P of {name} layer {split.layer})")
        if not 1 <= bits <= 16:
            raise BafError(f"bits: n={bits} must be in 1..16")
        split.model.check_size(size)
        self.split, self.ranking = split, ranking
        self.channels, self.bits, self.size = channels, bits, size
        self.codec = build_codec(codec, bits, effort=effort, qp=qp)
        if stream:
            if self.codec.name != "hevc":
                raise CodecError(f"stream coding needs hevc; {self.codec.name} codes every frame on its own")
            self.codec = HevcStreamEncoder(bits=bits, qp=qp)
        self.stream = stream
        self.sequence = first_sequence
        self._basis = ranking.basis().prefix(channels)

    @classmethod
    def load(cls, config: EdgeConfig) -> EdgeEncoder:
        """Load the model's edge half (checked weights) and the ranking, and build the encoder."""
        from baf.models.zoo import load_split

        split = load_split(config.model, config.layer, config.weights)
        ranking = find_ranking(split.model.name, split.layer, config.ranking)
        return cls(
            split, ranking, channels=config.channels, bits=config.bits, codec=config.codec, effort=config.effort,
            qp=config.qp, stream=config.stream, size=config.size,
        )  # fmt: skip

    def features(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(the first C sent channels [C,h,w] float32, in sequence order; the letterbox placement)."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
            raise BafError(f"frame must be RGB uint8 [H,W,3], got {got}")
        z, box = edge_image(self.split.edge, image, self.size)
        return self.select(z[0]), box

    def select(self, z: Tensor) -> np.ndarray:
        """The first C sent channels [C,h,w] float32 (sequence order) of one image's edge output Z [P,h,w]."""
        return np.ascontiguousarray(self._basis.send(z.float()).cpu().numpy())

    def encode_features(self, z: np.ndarray, box: Letterbox, sequence: int | None = None) -> bytes:
        """The bitstream of sent features z [C,h,w] (from `features`) placed by `box`.

        `sequence` defaults to the encoder's next number; the encoder's count moves past it either way.
        """
        if sequence is None:
            sequence = self.sequence
        q, lo, hi = ops.quantize(np.ascontiguousarray(z, np.float32), self.bits)
        horizontal = box.width >= box.height  # that side fills the model input
        header = bitstream.Header(
            model=self.split.model.name, split_layer=self.split.layer, channels_total=self.split.channels,
            channels=self.channels, bits=self.bits, height=int(z.shape[1]), width=int(z.shape[2]),
            sequence=sequence, source_width=box.width, source_height=box.height,
            scale=box.new_width / box.width if horizontal else box.new_height / box.height,
            pad_x=box.left, pad_y=box.top, ranking_id=bytes.fromhex(self.ranking.id),
        )  # fmt: skip
        data = bitstream.encode_frame(header, q, lo, hi, self.codec)
        self.sequence = sequence + 1
        return data

    def encode(self, image: np.ndarray, sequence: int | None = None) -> bytes:
        """The bitstream of one RGB uint8 frame [H,W,3]."""
        return self.encode_features(*self.features(image), sequence=sequence)

    def close(self) -> None:
        """End the stream's encoder process, if it has one."""
        if isinstance(self.codec, HevcStreamEncoder):
            self.codec.close()

    def __enter__(self) -> EdgeEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

