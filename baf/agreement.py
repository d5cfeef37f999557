"""Agreement with the unsplit model, for data without labels (video): AP50 against its own detections.

The reference is the unsplit model's detections on the uncompressed frames, at the evaluator's
defaults (`baf.evaluate.EvalSettings`: conf 0.001, NMS IoU 0.45, 300 per frame); those scoring at
least `PSEUDO_GT_MIN_SCORE` (0.5) become pseudo ground truth. A method's detections (same settings)
are scored against it as COCO AP at IoU 0.5 over the 80 COCO classes (pycocotools, on an in-memory
ground truth; as in COCO, the 100 best detections per frame count and classes absent from the
reference are skipped). 1.0 means the method finds every reference box before any other box.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from baf.errors import BafError
from baf.evaluate import EvalSettings, coco_ap, coco_results
from baf.images import letterbox
from baf.models.darknet import Darknet
from baf.models.detect import Detections, detect
from baf.models.zoo import COCO_CATEGORY_IDS

PSEUDO_GT_MIN_SCORE = 0.5


def detect_image(
    model: Darknet, image: np.ndarray, settings: EvalSettings = EvalSettings(), *,
    source_size: tuple[int, int] | None = None,
) -> Detections:  # fmt: skip
    """The unsplit model on one RGB uint8 image [H,W,3], as `baf eval --baseline` runs it; boxes in source pixels.

    `source_size` (width, height): the image is a rescaled copy of a source of that size; boxes map to it.
    """
    x, box = letterbox(image, settings.size)
    if source_size is not None:
        box = box.rescaled_source(*source_size)
    with torch.inference_mode():
        outputs = model(x[None].to(next(model.parameters()).device))
    found = detect(outputs, model.heads, settings.size, settings.conf_threshold, settings.iou_threshold,
                   settings.max_detections)  # fmt: skip
    return found[0].to_source(box)


def pseudo_ground_truth(
    reference: Sequence[Detections], *, min_score: float = PSEUDO_GT_MIN_SCORE,
    category_ids: Sequence[int] = COCO_CATEGORY_IDS,
) -> Any:  # fmt: skip
    """A pycocotools `COCO` ground truth: image id i + 1 holds frame i's reference boxes scoring >= `min_score`."""
    from pycocotools.coco import COCO

    annotations = []
    for index, dets in enumerate(reference):
        keep = dets.scores >= min_score
        for (x1, y1, x2, y2), label in zip(dets.boxes[keep].tolist(), dets.labels[keep].tolist(), strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": category_ids[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })  # fmt: skip
    if not annotations:
        raise BafError(f"the reference has no detection scoring >= {min_score:g} in {len(reference)} frames; "
                       "nothing to agree with")  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": [{"id": index + 1} for index in range(len(reference))],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in category_ids],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def agreement_ap50(
    reference: Sequence[Detections], test: Sequence[Detections], *, min_score: float = PSEUDO_GT_MIN_SCORE,
    category_ids: Sequence[int] = COCO_CATEGORY_IDS,
) -> float:  # fmt: skip
    """AP at IoU 0.5 of `test` (detections per frame) against `reference` boxes scoring >= `min_score`.

    Both are in the same (source) pixels, one entry per frame; BafError if the reference has no such box.
    """
    if len(reference) != len(test):
        raise ValueError(f"{len(test)} test frames for {len(reference)} reference frames")
    truth = pseudo_ground_truth(reference, min_score=min_score, category_ids=category_ids)
    results = [r for index, dets in enumerate(test) for r in coco_results(dets, index + 1, category_ids)]
    return coco_ap(truth, results, range(1, len(reference) + 1))["AP50"]
