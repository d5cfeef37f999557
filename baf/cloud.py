"""The cloud decoder: `.baf` bitstreams in, detections in source-frame pixels out.

parse -> check the header against the loaded model and ranking -> payload decode (per-stream state
for hevc) -> untile -> dequantize (eq. 5) -> restoration: all P channels from the C transmitted ones
-> cloud half -> YOLO decode and NMS -> boxes mapped back through the letterbox.

Restoration is pluggable: anything with `restore(q, lo, hi, bits) -> Z [B,P,h,w]` (the `Restorer`
protocol, which `baf.predictor.BafPredictor` follows) can stand in for the built-in `zeros`, which
puts the transmitted channels in their ranked positions and leaves the others zero.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from baf import bitstream, ops
from baf.basis import SentBasis
from baf.bitstream import Header
from baf.codecs.hevc import HevcStreamDecoder
from baf.errors import BafError, BitstreamError, HeaderMismatchError, ModelError
from baf.images import Letterbox
from baf.models.detect import Detections, detect
from baf.models.split import Split
from baf.ranking import Ranking, find_ranking

log = logging.getLogger(__name__)

StageTimer = Callable[[str, float], None]
"""Called with (stage, seconds) after each stage a call ran: decode, dequantize, predict, backend, nms."""


@contextmanager
def _stage(timer: StageTimer | None, name: str, device: torch.device | None = None) -> Iterator[None]:
    """Time the block for `timer` (nothing when None); a stage that raised is not reported."""
    if timer is None:
        yield
        return
    start = time.perf_counter()
    yield
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)  # GPU work is asynchronous: charge it to the stage that queued it
    timer(name, time.perf_counter() - start)


class Restorer(Protocol):
    """Restores all P channels of Z from the first C sent ones (on the model's device)."""

    def restore(self, q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        """q [B,C,h,w] int32 (the first C sent rows), lo/hi [B,C] float16 -> Z [B,P,h,w], model channel order.

        Raises ValueError when it cannot serve this C or n.
        """
        ...


class ZerosRestorer:
    """The transmitted ranked channels dequantized (eq. 5) in their places; every other channel zero (virtual
    rows, fixed mixtures of all P, have no place of their own and are dropped)."""

    name = "zeros"

    def __init__(self, basis: SentBasis) -> None:
        self.total = basis.total
        (self._rows, self._channels), _ = basis.split_rows()  # once, not per frame

    def restore(self, q: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        """Z [B,P,h,w]: the dequantized ranked rows of q at their channels, zeros elsewhere."""
        z = ops.dequantize_torch(q, lo, hi, bits)
        sent = self._rows < z.shape[1]
        out = z.new_zeros((z.shape[0], self.total, *z.shape[2:]))
        out[:, self._channels[sent].to(z.device)] = z[:, self._rows[sent].to(z.device)]
        return out


@dataclass(frozen=True, kw_only=True)
class DetectSettings:
    """Detection thresholds of the cloud side."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300

    def __post_init__(self) -> None:
        if not (0 <= self.conf_threshold <= 1 and 0 <= self.iou_threshold <= 1) or self.max_detections < 1:
            raise BafError(
                f"detection settings out of range: conf {self.conf_threshold}, NMS IoU {self.iou_threshold}, "
                f"max detections {self.max_detections}"
            )


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded bitstream: header, quantized channels q [C,H,W], side info lo/hi float16 [C],
    the dequantized channels z [C,H,W] float32 (ranking order) and the bitstream's size in bytes."""

    header: Header
    q: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    z: np.ndarray
    size_bytes: int


class FrameDecoder:
    """Decodes the bitstreams of one stream, in order; hevc frames go through one long-lived decoder.

    With a `pipeline`, each header is checked against its model and ranking before any decoding.
    """

    def __init__(self, pipeline: CloudPipeline | None = None) -> None:
        self.pipeline = pipeline
        self._hevc: HevcStreamDecoder | None = None

    def _codec(self, header: Header) -> HevcStreamDecoder | None:
        """The stream's hevc decoder for this header's n and mode (None for other codecs: intra, stateless)."""
        if header.codec_name != "hevc":
            return None
        if self._hevc is not None and (self._hevc.bits, self._hevc.lossless) != (header.bits, header.lossless):
            self._hevc.close()
            self._hevc = None
        if self._hevc is None:
            self._hevc = HevcStreamDecoder(bits=header.bits, lossless=header.lossless)
        return self._hevc

    def decode(self, data: bytes, timer: StageTimer | None = None) -> DecodedFrame:
        """Parse, check and decode one bitstream (BitstreamError, CodecError or HeaderMismatchError if it fails)."""
        with _stage(timer, "decode"):
            frame = bitstream.parse(data)
            h = frame.header
            if self.pipeline is not None:
                self.pipeline.check_header(h)
            q = bitstream.decode_frame(frame, self._codec(h))
        with _stage(timer, "dequantize"):
            z = ops.dequantize(q, frame.lo, frame.hi, h.bits)
        return DecodedFrame(h, q, frame.lo, frame.hi, z, len(data))

    def close(self) -> None:
        """End the stream's decoder process, if any."""
        if self._hevc is not None:
            self._hevc.close()
            self._hevc = None

    def __enter__(self) -> FrameDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CloudPipeline:
    """The model side shared by every stream: checks headers, restores Z, runs the cloud half and NMS.

    It accepts the frames of `ranking` (restored by `restorer`) and of every ranking in `also`, each with its
    own restorer; the header's ranking id picks one.
    """

    def __init__(
        self,
        split: Split,
        ranking: Ranking,
        *,
        restorer: Restorer | None = None,
        settings: DetectSettings | None = None,
        also: Sequence[tuple[Ranking, Restorer]] = (),
    ) -> None:
        self.split, self.ranking = split, ranking
        self.restorer: Restorer = restorer or ZerosRestorer(ranking.basis())
        self.restoration = restoration_name(self.restorer)
        self.restorers: dict[str, tuple[Ranking, Restorer]] = {}
        for r, rest in ((ranking, self.restorer), *also):
            if (r.model, r.layer, r.channels) != (split.model.name, split.layer, split.channels):
                raise BafError(f"ranking {r.id} orders {r.model} layer {r.layer}, not {split.model.name} layer "
                               f"{split.layer}")  # fmt: skip
            if r.id in self.restorers:
                raise BafError(f"ranking {r.id} is given twice")
            self.restorers[r.id] = (r, rest)
        self.settings = settings or DetectSettings()

    @classmethod
    def load(
        cls,
        model: str = "yolov3-tiny",
        layer: int | None = None,
        weights: str | os.PathLike[str] | None = None,
        ranking: str | os.PathLike[str] | None = None,
        *,
        restorer: Restorer | None = None,
        settings: DetectSettings | None = None,
    ) -> CloudPipeline:
        """Load the model (checked weights) and the ranking (a file, or the packaged one)."""
        from baf.models.zoo import load_split

        split = load_split(model, layer, weights)
        return cls(split, find_ranking(split.model.name, split.layer, ranking), restorer=restorer, settings=settings)

    def stream(self) -> FrameDecoder:
        """A decoder for one new stream, checking headers against this pipeline."""
        return FrameDecoder(self)

    def input_size(self, header: Header) -> int:
        """The model input size (pixels a side) whose features the header describes."""
        return header.height * self.split.feature_stride

    def check_header(self, header: Header) -> None:
        """Raise HeaderMismatchError naming every header field that does not fit this model and ranking."""
        h, split = header, self.split
        wrong = [
            f"{what} {found} (decoder: {expected})"
            for what, found, expected in (
                ("model", h.model, split.model.name),
                ("split layer", h.split_layer, split.layer),
                ("P", h.channels_total, split.channels),
            )
            if found != expected
        ]
        if h.ranking_hex not in self.restorers:
            wrong.append(f"ranking {h.ranking_hex} (decoder: {', '.join(self.restorers)})")
        if h.height != h.width:
            wrong.append(f"H x W {h.height}x{h.width} (decoder: square letterboxed features)")
        else:
            try:
                split.model.check_size(self.input_size(h))
            except ModelError as e:
                wrong.append(f"H x W {h.height}x{h.width} ({e})")
        if wrong:
            raise HeaderMismatchError(f"bitstream does not fit this decoder: {'; '.join(wrong)}")

    def letterbox(self, header: Header) -> Letterbox:
        """Where the source frame sat in the model input; the header must hold darknet's placement."""
        box = Letterbox.fit(header.source_width, header.source_height, self.input_size(header))
        horizontal = box.width >= box.height
        scale = box.new_width / box.width if horizontal else box.new_height / box.height
        same_pad = (header.pad_x, header.pad_y) == (box.left, box.top)
        if not (math.isclose(header.scale, scale, rel_tol=1e-6) and same_pad):
            raise BitstreamError(
                f"letterbox: scale {header.scale:g} pad ({header.pad_x:g}, {header.pad_y:g}) is not the darknet "
                f"placement of {box.width}x{box.height} into {box.size} (scale {scale:g} pad ({box.left}, {box.top}))"
            )
        return box

    def restore(self, frames: Sequence[DecodedFrame]) -> Tensor:
        """Z [B,P,h,w] for frames that share ranking, C, n and feature size, on the model's device."""
        first = frames[0].header
        key = _batch_key(first)
        if any(_batch_key(f.header) != key for f in frames):
            raise ValueError("frames: restore needs frames of one ranking, C, n and feature size")
        if first.ranking_hex not in self.restorers:
            raise HeaderMismatchError(f"ranking {first.ranking_hex} is not served here")
        restorer = self.restorers[first.ranking_hex][1]
        device = self.split.conv.weight.device
        q = torch.from_numpy(np.stack([f.q.astype(np.int32) for f in frames])).to(device)
        lo = torch.from_numpy(np.stack([f.lo for f in frames])).to(device)
        hi = torch.from_numpy(np.stack([f.hi for f in frames])).to(device)
        try:
            with torch.inference_mode():
                z = restorer.restore(q, lo, hi, first.bits)
        except ValueError as e:
            raise HeaderMismatchError(f"restoration {restoration_name(restorer)}: {e}") from None
        expected = (len(frames), self.split.channels, first.height, first.width)
        if tuple(z.shape) != expected:
            raise RuntimeError(f"restorer {restoration_name(restorer)} gave shape {tuple(z.shape)}, "
                               f"expected {expected}")  # fmt: skip
        return z.float()

    def detect(self, frames: Sequence[DecodedFrame], timer: StageTimer | None = None) -> list[Detections]:
        """Detections per frame, in source-frame pixels; frames of one ranking, C, n and size run as one batch.

        `timer` gets the predict, backend and nms time of each such batch.
        """
        groups: dict[tuple[str, int, int, int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(_batch_key(f.header), []).append(i)
        results: list[Detections | None] = [None] * len(frames)
        s = self.settings
        for indices in groups.values():
            batch = [frames[i] for i in indices]
            boxes = [self.letterbox(f.header) for f in batch]
            size = self.input_size(batch[0].header)
            device = self.split.conv.weight.device
            with _stage(timer, "predict", device):
                z = self.restore(batch)
            with torch.inference_mode():
                with _stage(timer, "backend", device):
                    outputs = self.split.cloud(z)
                with _stage(timer, "nms", device):
                    found = detect(outputs, self.split.model.heads, size, s.conf_threshold, s.iou_threshold,
                                   s.max_detections)
                    for i, d, box in zip(indices, found, boxes, strict=True):
                        results[i] = d.to_source(box)
        return [d for d in results if d is not None]


def _batch_key(header: Header) -> tuple[str, int, int, int, int]:
    """Frames restore together only with the same ranking, C, n and feature size."""
    return header.ranking_hex, header.channels, header.bits, header.height, header.width


def restoration_name(restorer: Restorer) -> str:
    """A restorer's name for logs and errors (`zeros`, `baf-predictor`, else its class)."""
    return str(getattr(restorer, "name", type(restorer).__name__))


def read_bitstreams(path: str | os.PathLike[str]) -> Iterator[tuple[str, bytes]]:
    """(name, bitstream) pairs from a `.baf` file, a `.bafs` stream container, or a folder of `.baf` files."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".baf" and p.is_file())
        if not files:
            raise BafError(f"{path}: no .baf files in this folder")
        for p in files:
            yield p.name, _read_file(p)
        return
    if is_stream_container(path):
        with path.open("rb") as f:
            for index, data in enumerate(bitstream.read_stream(f)):
                yield f"{path.name}#{index}", data
    else:
        yield path.name, _read_file(path)


def is_stream_container(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a file that starts like a `.bafs` stream container (BafError if it cannot be read)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(len(bitstream.STREAM_MAGIC)) == bitstream.STREAM_MAGIC
    except OSError as e:
        raise BafError(f"cannot read {path}: {e.strerror or e}") from None


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > bitstream.MAX_FRAME_BYTES:
            raise BitstreamError(f"{path}: {path.stat().st_size:,} bytes, more than a bitstream may hold")
        return path.read_bytes()
    except OSError as e:
        raise BafError(f"cannot read {path}: {e.strerror or e}") from None


def detections_json(dets: Detections, category_ids: Sequence[int]) -> list[dict[str, object]]:
    """Detections as JSON-ready dicts: box [x1, y1, x2, y2] in source pixels, score, class index, COCO category."""
    return [
        {"box": [round(v, 2) for v in box], "score": round(score, 5), "class": label,
         "category_id": category_ids[label]}
        for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True)
    ]  # fmt: skip

