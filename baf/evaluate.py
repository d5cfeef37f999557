"""COCO evaluation of a detector, unsplit or split, with an optional transform of Z between the halves.

The transform hook is where compressed paths plug in: anything that maps the edge output Z
[B,P,h,w] (and where each image sits in the model input) to a (restored) Z of the same shape, e.g.
quantize + codec + BaF prediction (`baf.roundtrip` runs the real bitstream path there). The image
hook is where cloud-only baselines plug in: it maps each loaded image to the image the model sees
(`baf.recode`: scaled, coded and decoded), and boxes are mapped back to the original's pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from baf.errors import DatasetError
from baf.images import Letterbox, letterbox, load_image
from baf.models.darknet import Darknet
from baf.models.detect import Detections, decode, postprocess
from baf.models.split import Split

log = logging.getLogger(__name__)

ZTransform = Callable[[Tensor, Sequence[Letterbox]], Tensor]
"""(Z [B,P,h,w], the batch's letterbox placements) -> the Z the cloud half gets (bitstream headers carry placements)."""
ImageTransform = Callable[[np.ndarray], np.ndarray]
"""RGB uint8 [H,W,3] as loaded -> the RGB uint8 image the model is fed instead (any size; boxes map back to H x W)."""
STAGES = ("preprocess", "edge", "transform", "cloud", "decode_nms")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints progress to stdout; keep it off our stdout and in the debug log."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield
    if out.getvalue().strip():
        log.debug("pycocotools: %s", out.getvalue().strip())


class _Clock:
    """Seconds spent per stage; `with clock("edge"): ...` adds the block's wall time."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] += time.perf_counter() - start


@dataclass(frozen=True)
class CocoDataset:
    """A COCO-style folder: `images/` plus one `instances_*.json`; `images` lists (image id, path) by id."""

    root: Path
    annotations: Path
    images: tuple[tuple[int, Path], ...]
    coco: Any = field(repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike[str], limit: int | None = None) -> CocoDataset:
        """Index `root`; only images that are both annotated and present count, the first `limit` of them by id."""
        from pycocotools.coco import COCO

        root = Path(root)
        image_dir = root / "images"
        if not image_dir.is_dir():
            raise DatasetError(f"{root}: no images/ folder")
        found = sorted(root.glob("instances_*.json"))
        if len(found) != 1:
            raise DatasetError(f"{root}: expected one instances_*.json, found {len(found)}")
        try:
            with _quiet():
                coco = COCO(str(found[0]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{found[0]}: not a COCO annotation file ({e})") from None
        present = {p.name for p in image_dir.iterdir()}
        images = tuple(
            (image_id, image_dir / coco.imgs[image_id]["file_name"])
            for image_id in sorted(coco.getImgIds())
            if coco.imgs[image_id]["file_name"] in present
        )
        if not images:
            raise DatasetError(f"{root}: none of the files in images/ is annotated in {found[0].name}")
        if limit is not None:
            if limit < 1:
                raise DatasetError(f"--limit must be >= 1, got {limit}")
            images = images[:limit]
        log.debug("dataset=%s images=%d annotations=%s", root, len(images), found[0].name)
        return cls(root, found[0], images, coco)

    def mean_file_bytes(self) -> float:
        """Mean size of the image files (the JPEGs an unsplit, cloud-only system would send)."""
        return sum(path.stat().st_size for _, path in self.images) / len(self.images)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """Input size and detection thresholds of one evaluation."""

    size: int = 512
    conf_threshold: float = 0.001
    iou_threshold: float = 0.45
    max_detections: int = 300
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not (0 <= self.conf_threshold <= 1 and 0 <= self.iou_threshold <= 1):
            raise ValueError(f"thresholds out of range: conf {self.conf_threshold}, NMS IoU {self.iou_threshold}")
        if self.max_detections < 1 or self.batch_size < 1:
            raise ValueError(
                f"max_detections and batch_size must be >= 1, got {self.max_detections}, {self.batch_size}"
            )


# COCOeval.stats, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass(frozen=True, kw_only=True)
class RateSummary:
    """What a compressed evaluation sent, and the mean bytes per image.

    Split paths send C channels at n bits through a payload `codec` (`qp` for hevc, `effort` for jxl),
    restored by `restoration`; `predictor_*` identify the restoring checkpoint (None with zeros).
    Cloud-only baselines send the image itself, recoded (`recode` "jpeg" at `quality`, or "hevc" at
    `qp`); their channels, bits, codec and restoration are None. `mean_bytes` counts what was sent
    (whole bitstreams with header and side info, or the coded images); `jpeg_mean_bytes` is the mean
    size of the source JPEGs.
    """

    channels: int | None
    bits: int | None
    codec: str | None
    qp: int | None
    effort: int | None
    restoration: str | None
    mean_bytes: float
    jpeg_mean_bytes: float
    predictor: str | None = None
    predictor_sha256: str | None = None
    predictor_steps: int | None = None
    recode: str | None = None
    quality: int | None = None

    @property
    def saved_vs_jpeg(self) -> float:
        """Fraction of the source JPEG bytes saved: 1 - mean_bytes / jpeg_mean_bytes."""
        return 1.0 - self.mean_bytes / self.jpeg_mean_bytes

    def to_json(self) -> dict[str, Any]:
        """The fields, plus saved_vs_jpeg."""
        return {**asdict(self), "saved_vs_jpeg": self.saved_vs_jpeg}


@dataclass(frozen=True, kw_only=True)
class EvalResult:
    """Scores and per-stage timings (ms per frame) of one evaluation; `rate` for a compressed path."""

    model: str
    mode: str
    split_layer: int | None
    settings: EvalSettings
    images: int
    detections: int
    stats: dict[str, float]
    timings_ms: dict[str, float]
    torch_threads: int
    rate: RateSummary | None = None

    @property
    def ap(self) -> float:
        return self.stats["AP"]

    @property
    def ap50(self) -> float:
        return self.stats["AP50"]

    def to_json(self) -> dict[str, Any]:
        """The JSON report: top-level model, size, images, AP, AP50, mode, then the details (and the rate)."""
        s = self.settings
        report = {
            "model": self.model,
            "mode": self.mode,
            "size": s.size,
            "images": self.images,
            "AP": self.ap,
            "AP50": self.ap50,
            "split_layer": self.split_layer,
            "conf_threshold": s.conf_threshold,
            "nms_iou": s.iou_threshold,
            "max_detections": s.max_detections,
            "batch_size": s.batch_size,
            "detections": self.detections,
            "stats": self.stats,
            "timings_ms_per_frame": self.timings_ms,
            "torch_threads": self.torch_threads,
        }
        return report if self.rate is None else {**report, **self.rate.to_json()}


def coco_results(dets: Detections, image_id: int, category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Detections in source pixels -> COCO result entries (bbox as x, y, w, h)."""
    boxes = dets.boxes.tolist()
    return [
        {
            "image_id": image_id,
            "category_id": category_ids[label],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(score, 5),
        }
        for (x1, y1, x2, y2), score, label in zip(boxes, dets.scores.tolist(), dets.labels.tolist(), strict=True)
    ]


def score(dataset: CocoDataset, results: list[dict[str, Any]]) -> dict[str, float]:
    """COCO bbox metrics (STAT_NAMES) of `results` over the dataset's images."""
    return coco_ap(dataset.coco, results, [image_id for image_id, _ in dataset.images])


def coco_ap(ground_truth: Any, results: list[dict[str, Any]], image_ids: Sequence[int]) -> dict[str, float]:
    """COCO bbox metrics (STAT_NAMES) of `results` against a pycocotools `COCO` ground truth, over `image_ids`."""
    if not results:
        log.warning("no detections at all; every metric is 0")
        return dict.fromkeys(STAT_NAMES, 0.0)
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}


def evaluate(
    model: Darknet,
    dataset: CocoDataset,
    category_ids: Sequence[int],
    *,
    split: Split | None = None,
    z_transform: ZTransform | None = None,
    image_transform: ImageTransform | None = None,
    mode: str | None = None,
    settings: EvalSettings = EvalSettings(),
    progress: bool | None = None,
) -> EvalResult:
    """Detect on every dataset image and score with pycocotools.

    Without `split` the whole model runs as one "cloud" stage (cloud-only, the paper's baseline);
    with it the edge half gives Z, `z_transform` (if any) maps Z to the Z the cloud half gets.
    `image_transform` (if any) replaces each loaded image before the letterbox (timed as "transform");
    boxes are still reported in the original image's pixels.
    `mode` labels the result (default: "baseline", "split-only", or "transformed").
    `progress`: show a bar (None: only on a terminal).
    """
    if split is None and z_transform is not None:
        raise ValueError("a Z transform needs a split model")
    if z_transform is not None and image_transform is not None:
        raise ValueError("use a Z transform or an image transform, not both")
    if split is not None and split.model is not model:
        raise ValueError("split must be a split of model")
    model.check_size(settings.size)
    transformed = z_transform is not None or image_transform is not None
    mode = mode or ("transformed" if transformed else "baseline" if split is None else "split-only")
    device = next(model.parameters()).device
    clock = _Clock()
    results: list[dict[str, Any]] = []
    with (
        torch.inference_mode(),
        tqdm(
            total=len(dataset.images), desc=mode, unit="img", disable=None if progress is None else not progress
        ) as bar,
    ):
        for i in range(0, len(dataset.images), settings.batch_size):
            batch = dataset.images[i : i + settings.batch_size]
            pairs = [_prepare(path, image_transform, settings.size, clock) for _, path in batch]
            with clock("preprocess"):
                x = torch.stack([image for image, _ in pairs]).to(device)
            if split is None:
                with clock("cloud"):
                    outputs = model(x)
            else:
                with clock("edge"):
                    z = split.edge(x)
                if z_transform is not None:
                    with clock("transform"):
                        z = z_transform(z, [box for _, box in pairs])
                with clock("cloud"):
                    outputs = split.cloud(z)
            with clock("decode_nms"):
                dets = postprocess(
                    decode(outputs, model.heads, settings.size),
                    settings.conf_threshold,
                    settings.iou_threshold,
                    settings.max_detections,
                )
                for (image_id, _), d, (_, box) in zip(batch, dets, pairs, strict=True):
                    results += coco_results(d.to_source(box), image_id, category_ids)
            bar.update(len(batch))
    n = len(dataset.images)
    timings = {stage: 1000 * clock.seconds[stage] / n for stage in STAGES}
    timings["total"] = sum(timings.values())
    return EvalResult(
        model=model.name,
        mode=mode,
        split_layer=None if split is None else split.layer,
        settings=settings,
        images=n,
        detections=len(results),
        stats=score(dataset, results),
        timings_ms=timings,
        torch_threads=torch.get_num_threads(),
    )


def _prepare(path: Path, image_transform: ImageTransform | None, size: int, clock: _Clock) -> tuple[Tensor, Letterbox]:
    """One image as model input and its placement, through `image_transform` when given (boxes map to the file)."""
    with clock("preprocess"):
        image = load_image(path)
    seen = image
    if image_transform is not None:
        with clock("transform"):
            seen = image_transform(image)
    with clock("preprocess"):
        x, box = letterbox(seen, size)
    return x, box if seen is image else box.rescaled_source(image.shape[1], image.shape[0])


def write_json(result: EvalResult, path: str | os.PathLike[str]) -> None:
    """Write `result.to_json()` to `path`, indented, with a trailing newline."""
    Path(path).write_text(json.dumps(result.to_json(), indent=2) + "\n")
