"""Darknet detection models: building them from cfg files, loading weights, splitting them, decoding detections."""

from baf.models.darknet import Darknet, YoloSpec, load_weights
from baf.models.detect import Detections, detect
from baf.models.split import CloudModel, EdgeModel, Split, edge_image, split
from baf.models.zoo import DEFAULT_MODEL, MODELS, ModelSpec, get_spec, load_model, load_split

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "CloudModel",
    "Darknet",
    "Detections",
    "EdgeModel",
    "ModelSpec",
    "Split",
    "YoloSpec",
    "detect",
    "edge_image",
    "get_spec",
    "load_model",
    "load_split",
    "load_weights",
    "split",
]
