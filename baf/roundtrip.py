"""The real bitstream path inside the evaluator: Z -> `.baf` bytes -> decoded, restored Z.

`BitstreamPath` is a `z_transform` for `baf.evaluate.evaluate`. Each image's edge output goes through
the edge encoder's own steps (`EdgeEncoder.select` and `encode_features`: ranked channels, quantize,
tile, codec, header and side info) and the cloud's (`FrameDecoder.decode`: parse, header check, codec
decode, untile; `CloudPipeline.restore`: zeros or the BaF predictor), so the bytes it counts are the
bytes a client would send. `evaluate_bitstream` runs a whole evaluation that way and adds the rate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from baf.cloud import CloudPipeline, ZerosRestorer
from baf.edge import EdgeEncoder
from baf.evaluate import CocoDataset, EvalResult, EvalSettings, RateSummary, evaluate
from baf.images import Letterbox
from baf.models.split import Split
from baf.predictor import BafPredictor, read_sidecar, trained_steps
from baf.ranking import Ranking

log = logging.getLogger(__name__)


class BitstreamPath:
    """Z hook that encodes every image to a bitstream, decodes and restores it; `sizes` holds each bitstream's bytes.

    With `save_dir`, each bitstream is also written there as `NNNNNN.baf` (frame sequence number).
    """

    def __init__(self, encoder: EdgeEncoder, pipeline: CloudPipeline, save_dir: Path | None = None) -> None:
        self.encoder, self.pipeline, self.save_dir = encoder, pipeline, save_dir
        self.decoder = pipeline.stream()
        self.sizes: list[int] = []

    def __call__(self, z: Tensor, boxes: Sequence[Letterbox]) -> Tensor:
        frames = []
        for sample, box in zip(z, boxes, strict=True):
            sequence = self.encoder.sequence
            data = self.encoder.encode_features(self.encoder.select(sample), box)
            if self.save_dir is not None:
                (self.save_dir / f"{sequence:06d}.baf").write_bytes(data)
            frames.append(self.decoder.decode(data))
            self.sizes.append(len(data))
        return self.pipeline.restore(frames).to(z.dtype)

    @property
    def mean_bytes(self) -> float:
        """Mean bitstream size so far (whole bitstreams: header, side info and payload)."""
        if not self.sizes:
            raise ValueError("no bitstream yet")
        return sum(self.sizes) / len(self.sizes)

    def close(self) -> None:
        """End the codec processes of both sides, if any."""
        self.encoder.close()
        self.decoder.close()


def evaluate_bitstream(
    split: Split,
    ranking: Ranking,
    dataset: CocoDataset,
    category_ids: Sequence[int],
    *,
    channels: int,
    bits: int,
    codec: str,
    qp: int | None = None,
    effort: int | None = None,
    predictor: BafPredictor | None = None,
    predictor_path: Path | None = None,
    mode: str | None = None,
    settings: EvalSettings = EvalSettings(),
    save_dir: Path | None = None,
    progress: bool | None = None,
) -> EvalResult:
    """COCO scores of `dataset` with Z sent as C channels at n bits through `codec`, and the bytes it took.

    Restoration is `predictor` when given (ValueError if it does not serve C and n), else zeros.
    `predictor_path` (its checkpoint) names it in the result, with the training steps from its sidecar.
    Raises BafError/CodecError for settings the edge encoder refuses.
    """
    if predictor is not None:
        predictor.check_serves(channels, bits)
    restorer = predictor if predictor is not None else ZerosRestorer(ranking.basis())
    encoder = EdgeEncoder(split, ranking, channels=channels, bits=bits, codec=codec, qp=qp, effort=effort,
                          size=settings.size)
    path = BitstreamPath(encoder, CloudPipeline(split, ranking, restorer=restorer), save_dir)
    try:
        result = evaluate(split.model, dataset, category_ids, split=split, z_transform=path, settings=settings,
                          mode=mode or f"bitstream C={channels} n={bits} {codec}", progress=progress)
    finally:
        path.close()
    sha256 = None if predictor is None else getattr(predictor, "source_sha256", None)
    steps = None
    if predictor_path is not None:
        sidecar, _ = read_sidecar(predictor_path)
        if sidecar.get("sha256") == sha256:
            steps = trained_steps(sidecar)
        else:  # a training run republished the checkpoint since it was loaded: its steps are not ours
            log.warning("%s changed since it was loaded; its steps are not recorded", predictor_path)
    rate = RateSummary(
        channels=channels, bits=bits, codec=encoder.codec.name, qp=qp, effort=effort,
        restoration=predictor.config.kind if predictor is not None else "zeros", mean_bytes=path.mean_bytes,
        jpeg_mean_bytes=dataset.mean_file_bytes(),
        predictor=None if predictor_path is None else Path(predictor_path).name,
        predictor_sha256=sha256, predictor_steps=steps,
    )  # fmt: skip
    log.info("%s: AP50 %.4f, %.0f bytes per image", result.mode, result.ap50, rate.mean_bytes)
    return dataclasses.replace(result, rate=rate)
