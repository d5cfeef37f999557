"""Cloud-only baselines: what a user who does not split the network sends instead, the image itself, recoded.

Each image is scaled so its long side is the model input size (Pillow LANCZOS, aspect kept, no
padding; the short side by darknet's integer arithmetic, `Letterbox.fit`, so the letterbox that
follows never resizes again), coded, decoded, and fed to the unsplit model as `baf eval --baseline`
feeds a decoded image. The bytes are the coded file's size.

- JPEG (`jpeg`, quality 1..100): Pillow's libjpeg, baseline (not progressive), 4:2:0 chroma
  subsampling, the standard IJG quantization tables scaled by quality, standard Huffman tables
  (`optimize=False`), no metadata.
- HEVC intra (`hevc`, QP 0..51): the Debian ffmpeg's libx265, one frame, yuv420p (ffmpeg's default
  RGB->YUV conversion: BT.601, limited range), preset medium, `-x265-params qp=Q` (constant QP; x265
  codes an I picture at Q - 3 because of its ipratio 1.4, exactly as for the feature codec's intra
  frames), written as a raw Annex B stream. 4:2:0 needs even sides, so an odd side is padded by one
  replicated row or column for the coder and cropped after decoding.

`encode_hevc_video` codes a whole clip the same way but with inter prediction and x265's default GOP
(preset medium: keyint 250, min-keyint 25, scenecut, 4 B-frames, lookahead 20), for `bench/video_baselines.py`.
Every coder failure is raised as `CodecError` (or `CodecUnavailableError` without ffmpeg/libx265).
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from baf.codecs.hevc import _run_once, ffmpeg_binary
from baf.errors import CodecError
from baf.evaluate import CocoDataset, EvalResult, EvalSettings, RateSummary, evaluate
from baf.images import Letterbox
from baf.models.darknet import Darknet

log = logging.getLogger(__name__)

CODERS: tuple[str, ...] = ("jpeg", "hevc")
HEVC_PRESET = "medium"
_FFMPEG_QUIET = ("-hide_banner", "-loglevel", "error", "-nostdin")


def check_quality(quality: object) -> int:
    """`quality` if it is an int in 1..100, else CodecError naming --quality."""
    if not (isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100):
        raise CodecError(f"--quality: JPEG quality must be an int in 1..100, got {quality!r}")
    return quality


def check_qp(qp: object) -> int:
    """`qp` if it is an int in 0..51, else CodecError naming --qp."""
    if not (isinstance(qp, int) and not isinstance(qp, bool) and 0 <= qp <= 51):
        raise CodecError(f"--qp: HEVC QP must be an int in 0..51, got {qp!r}")
    return qp


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise CodecError(f"recode: image must be RGB uint8 [H,W,3], got {got}")
    return np.ascontiguousarray(image)


def scale_to_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 [H,W,3] scaled (Pillow LANCZOS) so its long side is `size`, aspect kept; unchanged if it already is."""
    image = _check_rgb(image)
    box = Letterbox.fit(image.shape[1], image.shape[0], size)
    if (box.new_width, box.new_height) == (box.width, box.height):
        return image
    return np.asarray(Image.fromarray(image).resize((box.new_width, box.new_height), Image.Resampling.LANCZOS))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """A baseline 4:2:0 JPEG of RGB uint8 [H,W,3] at `quality` (standard tables, no metadata)."""
    quality = check_quality(quality)
    out = io.BytesIO()
    try:
        Image.fromarray(_check_rgb(image)).save(out, format="JPEG", quality=quality, subsampling="4:2:0",
                                                optimize=False, progressive=False)  # fmt: skip
    except (OSError, ValueError) as e:
        raise CodecError(f"jpeg: cannot encode: {e}") from None
    return out.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB uint8 [H,W,3] of a JPEG file's bytes."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CodecError(f"jpeg: cannot decode: {e}") from None


def _even(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0] + shape[0] % 2, shape[1] + shape[1] % 2


def _hevc_encode(frames: Sequence[np.ndarray], qp: int, fps: float, timeout_s: float | None) -> bytes:
    """One libx265 run over `frames` (all of one size), padded to even sides; a raw Annex B stream."""
    qp = check_qp(qp)
    if not frames:
        raise CodecError("hevc: no frames to encode")
    shape = frames[0].shape
    h, w = _even(shape)
    raw = bytearray()
    for frame in frames:
        frame = _check_rgb(frame)
        if frame.shape != shape:
            raise CodecError(f"hevc: frames must share one size, got {list(frame.shape)} after {list(shape)}")
        raw += np.pad(frame, ((0, h - shape[0]), (0, w - shape[1]), (0, 0)), mode="edge").tobytes()
    args = [ffmpeg_binary(), *_FFMPEG_QUIET, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}",
            "-i", "pipe:", "-frames:v", str(len(frames)), "-pix_fmt", "yuv420p", "-c:v", "libx265",
            "-preset", HEVC_PRESET, "-x265-params", f"qp={qp}:log-level=error", "-f", "hevc", "pipe:"]
    data = _run_once(args, bytes(raw), timeout_s or 30.0 + 2.0 * len(frames), "encode")
    if not data:
        raise CodecError("hevc: ffmpeg wrote no bitstream")
    return data


def encode_hevc_intra(image: np.ndarray, qp: int, *, timeout_s: float = 30.0) -> bytes:
    """RGB uint8 [H,W,3] as one HEVC intra picture (yuv420p, constant QP `qp`): a raw Annex B stream."""
    return _hevc_encode([image], qp, 25.0, timeout_s)


def encode_hevc_video(frames: Sequence[np.ndarray], qp: int, *, fps: float = 25.0,
                      timeout_s: float | None = None) -> bytes:  # fmt: skip
    """RGB uint8 frames [H,W,3] of one size as one HEVC stream: inter prediction, x265's default GOP, constant QP.

    `timeout_s` defaults to 30 s plus 2 s a frame.
    """
    return _hevc_encode(frames, qp, fps, timeout_s)


def decode_hevc(data: bytes, shape: tuple[int, int], frames: int = 1, *, timeout_s: float | None = None) -> np.ndarray:
    """The first `frames` pictures of an HEVC stream from `encode_hevc_*` of images of `shape` (H, W): [F,H,W,3]."""
    if frames < 1:
        raise CodecError(f"hevc: frames must be >= 1, got {frames}")
    h, w = _even(shape)
    args = [ffmpeg_binary(), *_FFMPEG_QUIET, "-f", "hevc", "-i", "pipe:", "-frames:v", str(frames),
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    out = _run_once(args, data, timeout_s or 30.0 + 0.5 * frames, "decode")
    if len(out) != frames * h * w * 3:
        raise CodecError(f"hevc: stream decodes to {len(out)} bytes, expected {frames} frames of {w}x{h}")
    return np.frombuffer(out, np.uint8).reshape(frames, h, w, 3)[:, : shape[0], : shape[1]].copy()


class Recoder:
    """An image transform for `baf.evaluate.evaluate`: scale to the long side, code, decode.

    `sizes` holds the coded bytes of every image so far. `coder` "jpeg" takes `quality`, "hevc" takes `qp`.
    """

    def __init__(self, coder: str, *, quality: int | None = None, qp: int | None = None, size: int = 512) -> None:
        if coder not in CODERS:
            raise CodecError(f"--recode: unknown coder {coder!r}; choose from {', '.join(CODERS)}")
        if coder == "jpeg":
            if qp is not None:
                raise CodecError("--qp applies to --recode hevc; --recode jpeg takes --quality")
            self.quality, self.qp = check_quality(quality), None
        else:
            if quality is not None:
                raise CodecError("--quality applies to --recode jpeg; --recode hevc takes --qp")
            self.quality, self.qp = None, check_qp(qp)
        if size < 1:
            raise CodecError(f"recode: size must be >= 1, got {size}")
        self.coder, self.size = coder, size
        self.sizes: list[int] = []

    @property
    def label(self) -> str:
        """The evaluation's mode name, e.g. "recode jpeg q=50" or "recode hevc qp=37"."""
        return f"recode jpeg q={self.quality}" if self.coder == "jpeg" else f"recode hevc qp={self.qp}"

    def encode(self, image: np.ndarray) -> bytes:
        """The coded bytes of an image that is already scaled."""
        return encode_jpeg(image, self.quality) if self.coder == "jpeg" else encode_hevc_intra(image, self.qp)

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """The decoded image [H,W,3] of `encode`'s bytes for an image of `shape` (H, W)."""
        image = decode_jpeg(data) if self.coder == "jpeg" else decode_hevc(data, shape)[0]
        if image.shape[:2] != tuple(shape):
            raise CodecError(f"{self.coder}: decoded {image.shape[1]}x{image.shape[0]}, expected {shape[1]}x{shape[0]}")
        return image

    def __call__(self, image: np.ndarray) -> np.ndarray:
        scaled = scale_to_long_side(image, self.size)
        data = self.encode(scaled)
        self.sizes.append(len(data))
        return self.decode(data, scaled.shape[:2])

    @property
    def mean_bytes(self) -> float:
        """Mean coded size so far."""
        if not self.sizes:
            raise ValueError("no image coded yet")
        return sum(self.sizes) / len(self.sizes)


def evaluate_recoded(
    model: Darknet,
    dataset: CocoDataset,
    category_ids: Sequence[int],
    recoder: Recoder,
    *,
    settings: EvalSettings = EvalSettings(),
    progress: bool | None = None,
) -> EvalResult:
    """COCO scores of the unsplit model on the recoded images (`baf.evaluate.evaluate`), with the bytes sent.

    The rate's `recode`, `quality`/`qp` and `mean_bytes` (coded images) are set; its split fields are None.
    """
    if recoder.size != settings.size:
        raise CodecError(f"recode: images are scaled to {recoder.size}, but the model input is {settings.size}")
    result = evaluate(model, dataset, category_ids, image_transform=recoder, mode=recoder.label, settings=settings,
                      progress=progress)  # fmt: skip
    rate = RateSummary(
        channels=None, bits=None, codec=None, qp=recoder.qp, effort=None, restoration=None,
        mean_bytes=recoder.mean_bytes, jpeg_mean_bytes=dataset.mean_file_bytes(), recode=recoder.coder,
        quality=recoder.quality,
    )  # fmt: skip
    log.info("%s: AP50 %.4f, %.0f bytes per image", result.mode, result.ap50, rate.mean_bytes)
    return dataclasses.replace(result, rate=rate)
