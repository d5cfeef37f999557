"""The real yolov3-tiny weights on val164 images: exact loading, the layer-8 split, and objects actually found."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from baf.evaluate import CocoDataset
from baf.images import letterbox, load_image
from baf.models import zoo
from baf.models.darknet import Darknet, load_weights
from baf.models.detect import box_iou, detect
from baf.models.split import edge_image, split

pytestmark = pytest.mark.slow

# Images where every large object (area > 96^2) is one tiny can find: people, a cake, a fridge and oven, a kitchen.
IMAGE_IDS = (802, 5001, 25603, 56344)


@pytest.fixture(scope="module")
def tiny() -> Darknet:
    return zoo.load_model("yolov3-tiny")


@pytest.fixture(scope="module")
def val164(shared_data: Path) -> CocoDataset:
    return CocoDataset.open(shared_data / "coco-val164")


def test_real_weights_are_consumed_exactly():
    path = zoo.find_weights(zoo.get_spec("yolov3-tiny"))
    model = Darknet.from_cfg(zoo.get_spec("yolov3-tiny").cfg_path())
    header = load_weights(model, path)
    assert (header.major, header.minor, header.nbytes) == (0, 2, 20)
    assert header.nbytes + 4 * model.num_weights() == path.stat().st_size


def test_edge_plus_cloud_equals_the_whole_model(tiny, val164):
    cut = split(tiny, zoo.get_spec("yolov3-tiny").split_layer)
    image = load_image(val164.images[0][1])
    z, box = edge_image(cut.edge, image, 512)
    assert z.shape == (1, 256, 32, 32) and (cut.stride, cut.feature_stride) == (1, 16)
    x, same_box = letterbox(image, 512)
    assert box == same_box
    with torch.inference_mode():
        whole, parts = tiny(x[None]), cut.cloud(z)
    assert [tuple(t.shape) for t in whole] == [(1, 255, 16, 16), (1, 255, 32, 32)]
    assert max((a - b).abs().max().item() for a, b in zip(whole, parts, strict=True)) <= 1e-5


@pytest.mark.parametrize("image_id", IMAGE_IDS)
def test_large_annotated_objects_are_found(tiny, val164, image_id):
    path = dict(val164.images)[image_id]
    coco = val164.coco
    truth = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a["area"] > 96 * 96]
    assert truth
    x, box = letterbox(load_image(path), 512)
    with torch.inference_mode():
        dets = detect(tiny(x[None]), tiny.heads, 512, conf_threshold=0.25)[0].to_source(box)
    for ann in truth:
        x0, y0, w, h = ann["bbox"]
        same_class = dets.labels == zoo.COCO_CATEGORY_IDS.index(ann["category_id"])
        assert same_class.any(), f"no {coco.cats[ann['category_id']]['name']} detected"
        best = box_iou(torch.tensor([[x0, y0, x0 + w, y0 + h]]), dets.boxes[same_class]).max().item()
        assert best >= 0.5, f"{coco.cats[ann['category_id']]['name']}: best IoU {best:.2f}"
