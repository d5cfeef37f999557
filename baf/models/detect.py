"""From raw YOLO head maps to detections: box decoding, confidence filtering, per-class NMS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from baf.images import Letterbox
from baf.models.darknet import YoloSpec


@dataclass(frozen=True)
class Detections:
    """Detections in one image: `boxes` [N,4] (x1, y1, x2, y2 pixels), `scores` [N], `labels` [N] class indices."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_source(self, box: Letterbox) -> Detections:
        """The same detections with boxes mapped from the model input back to the source image."""
        return Detections(box.to_source(self.boxes), self.scores, self.labels)


def decode(outputs: Sequence[Tensor], heads: Sequence[YoloSpec], size: int) -> Tensor:
    """Raw head maps of a `size` x `size` input -> [B, N, 5 + classes].

    Per row: x1, y1, x2, y2 (input pixels), objectness, class probabilities.
    """
    if len(outputs) != len(heads):
        raise ValueError(f"{len(outputs)} head outputs for {len(heads)} heads")
    parts = []
    for out, spec in zip(outputs, heads, strict=True):
        b, _, h, w = out.shape
        a, n = len(spec.anchors), spec.classes + 5
        p = out.view(b, a, n, h, w).permute(0, 1, 3, 4, 2)
        gy, gx = torch.meshgrid(
            torch.arange(h, device=out.device, dtype=out.dtype),
            torch.arange(w, device=out.device, dtype=out.dtype),
            indexing="ij",
        )
        stride = torch.tensor([size / w, size / h], device=out.device, dtype=out.dtype)
        anchors = torch.tensor(spec.anchors, device=out.device, dtype=out.dtype).view(1, a, 1, 1, 2)
        xy = (p[..., :2].sigmoid() + torch.stack((gx, gy), -1)) * stride
        wh = p[..., 2:4].exp() * anchors
        parts.append(torch.cat((xy - wh / 2, xy + wh / 2, p[..., 4:].sigmoid()), -1).reshape(b, -1, n))
    return torch.cat(parts, 1)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of boxes a [N,4] and b [M,4] (x1, y1, x2, y2) -> [N,M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=torch.finfo(a.dtype).tiny)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: kept indices, highest score first; a box goes if its IoU with a kept one exceeds the threshold."""
    order = scores.argsort(descending=True, stable=True)
    overlaps = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each label separately; kept indices sorted by decreasing score."""
    # One class at a time keeps the IoU matrices small: at conf 0.001 there are thousands of candidates.
    kept = [
        idx[nms(boxes[idx], scores[idx], iou_threshold)]
        for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique())
    ]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    keep = torch.cat(kept)
    return keep[scores[keep].argsort(descending=True, stable=True)]


def postprocess(
    predictions: Tensor, conf_threshold: float, iou_threshold: float, max_detections: int
) -> list[Detections]:
    """Decoded predictions [B,N,5+classes] -> per image, at most `max_detections` detections after per-class NMS.

    Every class whose score (objectness x class probability) exceeds `conf_threshold` gives a candidate.
    """
    results = []
    for p in predictions:
        p = p[p[:, 4] > conf_threshold]
        scores = p[:, 5:] * p[:, 4:5]
        rows, labels = torch.nonzero(scores > conf_threshold, as_tuple=True)
        boxes, scores = p[rows, :4], scores[rows, labels]
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        results.append(Detections(boxes[keep], scores[keep], labels[keep]))
    return results


def detect(
    outputs: Sequence[Tensor],
    heads: Sequence[YoloSpec],
    size: int,
    conf_threshold: float = 0.001,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
) -> list[Detections]:
    """Raw head maps -> detections per image, in model-input pixels (`Detections.to_source` maps them back)."""
    return postprocess(decode(outputs, heads, size), conf_threshold, iou_threshold, max_detections)
