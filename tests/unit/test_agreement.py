"""baf.agreement: AP50 of detections against the unsplit model's own boxes (pseudo ground truth)."""

from __future__ import annotations

import pytest
import torch

from baf.agreement import agreement_ap50, pseudo_ground_truth
from baf.errors import BafError
from baf.models.detect import Detections


def dets(boxes, scores, labels) -> Detections:
    return Detections(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                      torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long))


REFERENCE = [
    dets([[10, 10, 60, 60], [100, 100, 200, 180], [300, 300, 320, 320]], [0.9, 0.8, 0.2], [0, 2, 0]),
    dets([[5, 5, 50, 50]], [0.7], [0]),
]
NONE = [dets([], [], []), dets([], [], [])]


def test_pseudo_ground_truth_keeps_boxes_from_score_half_up():
    truth = pseudo_ground_truth(REFERENCE)
    anns = truth.dataset["annotations"]
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(1, 1), (1, 3), (2, 1)]  # class 2 is COCO id 3
    assert anns[1]["bbox"] == [100, 100, 100, 80] and len(truth.dataset["categories"]) == 80
    assert len(pseudo_ground_truth(REFERENCE, min_score=0.1).dataset["annotations"]) == 4


def test_identical_detections_agree_fully():
    assert agreement_ap50(REFERENCE, REFERENCE) == pytest.approx(1.0)


def test_no_detections_score_zero():
    assert agreement_ap50(REFERENCE, NONE) == 0.0


def test_a_box_shifted_below_iou_half_lowers_the_score():
    shifted = [dets(REFERENCE[0].boxes + torch.tensor([40.0, 0, 40, 0]), REFERENCE[0].scores, REFERENCE[0].labels),
               REFERENCE[1]]
    slightly = [dets(REFERENCE[0].boxes + torch.tensor([5.0, 0, 5, 0]), REFERENCE[0].scores, REFERENCE[0].labels),
                REFERENCE[1]]
    assert agreement_ap50(REFERENCE, slightly) == pytest.approx(1.0)  # IoU 0.82 and 0.90: still matches at 0.5
    assert agreement_ap50(REFERENCE, shifted) < 0.5


def test_a_reference_without_confident_boxes_or_a_frame_mismatch_is_refused():
    with pytest.raises(BafError, match="no detection scoring >= 0.5 in 2 frames"):
        agreement_ap50(NONE, NONE)
    with pytest.raises(ValueError, match="1 test frames for 2 reference frames"):
        agreement_ap50(REFERENCE, REFERENCE[:1])
