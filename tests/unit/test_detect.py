"""YOLO head decoding, NMS against a brute-force reference, and postprocessing."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baf.images import Letterbox
from baf.models.darknet import YoloSpec
from baf.models.detect import Detections, batched_nms, box_iou, decode, detect, nms

HEAD = YoloSpec(layer=0, anchors=((10.0, 20.0), (30.0, 40.0)), classes=3)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def raw_head(h: int, w: int) -> torch.Tensor:
    """A [1, 2*(5+3), h, w] map with every objectness and class at a tiny probability."""
    out = torch.zeros(1, 2, 8, h, w)
    out[:, :, 4:] = logit(1e-6)
    return out


def test_decode_places_boxes_on_the_grid_with_anchor_sizes():
    raw = raw_head(4, 4)
    raw[0, 1, 0, 2, 3] = logit(0.25)  # anchor 1, cell (row 2, col 3): x offset 0.25
    raw[0, 1, 2, 2, 3] = math.log(2.0)  # width twice the anchor
    raw[0, 1, 4, 2, 3] = logit(0.9)
    raw[0, 1, 5 + 2, 2, 3] = logit(0.8)
    pred = decode([raw.view(1, 16, 4, 4)], [HEAD], size=64)  # stride 16
    assert pred.shape == (1, 2 * 16, 8)
    row = pred[0, 16 + 2 * 4 + 3]  # anchor-major, then row, then column
    cx, cy = (3 + 0.25) * 16, (2 + 0.5) * 16
    torch.testing.assert_close(row[:4], torch.tensor([cx - 30, cy - 20, cx + 30, cy + 20]))
    torch.testing.assert_close(row[4:], torch.tensor([0.9, 1e-6, 1e-6, 0.8]), atol=1e-6, rtol=1e-4)


def test_detect_scores_each_class_and_suppresses_duplicates():
    raw = raw_head(4, 4)
    for col, cls_p in ((1, 0.9), (2, 0.6)):  # two neighbouring cells with the same large anchor: overlapping boxes
        raw[0, 1, 2, 1, col] = math.log(3.0)
        raw[0, 1, 3, 1, col] = math.log(3.0)
        raw[0, 1, 4, 1, col] = logit(0.8)
        raw[0, 1, 5, 1, col] = logit(cls_p)
        raw[0, 1, 6, 1, col] = logit(0.5)  # a second class on the same box is its own candidate
    dets = detect([raw.view(1, 16, 4, 4)], [HEAD], 64, conf_threshold=0.1, iou_threshold=0.45)[0]
    assert dets.labels.tolist() == [0, 1]
    torch.testing.assert_close(dets.scores, torch.tensor([0.72, 0.4]))
    kept = detect([raw.view(1, 16, 4, 4)], [HEAD], 64, conf_threshold=0.1, iou_threshold=0.99)[0]
    assert len(kept) == 4 and len(detect([raw.view(1, 16, 4, 4)], [HEAD], 64, 0.1, 0.99, max_detections=3)[0]) == 3


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    for i in order:
        if all(float(box_iou(boxes[i : i + 1], boxes[j : j + 1])) <= threshold for j in keep):
            keep.append(i)
    return keep


@settings(deadline=None, max_examples=60)
@given(n=st.integers(0, 30), seed=st.integers(0, 2**31 - 1), threshold=st.sampled_from([0.3, 0.45, 0.7]))
def test_nms_matches_greedy_reference(n, seed, threshold):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 5 + torch.rand(n, 2, generator=g) * 30), 1)
    scores = torch.rand(n, generator=g).round(decimals=1)  # ties on purpose: the lower index wins
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, threshold)


def test_batched_nms_keeps_classes_apart():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 1, 0, 0])
    assert batched_nms(boxes, scores, labels, 0.45).tolist() == [0, 1, 3]
    assert batched_nms(boxes[:0], scores[:0], labels[:0], 0.45).tolist() == []


def test_detections_map_back_to_the_source_image():
    box = Letterbox.fit(200, 100, 64)  # 64 x 32 image, 16 rows of padding above
    dets = Detections(
        torch.tensor([[0.0, 16, 64, 48], [-5, 0, 32, 70]]), torch.tensor([0.5, 0.4]), torch.tensor([1, 2])
    )
    src = dets.to_source(box)
    torch.testing.assert_close(src.boxes, torch.tensor([[0.0, 0, 200, 100], [0, 0, 100, 100]]))
    assert src.labels.tolist() == [1, 2]
