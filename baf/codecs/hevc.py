"""`hevc`: x265 through the ffmpeg binary (driven with ffmpeg-python), on grayscale frames.

The tiled image is one gray frame: 8-bit (`gray`) for n <= 8, 10-bit (`gray10le`) for n <= 10,
12-bit (`gray12le`) for n <= 12; n > 12 is refused. Lossless (`qp=None`, x265 `lossless=1`, exact)
stores the n-bit values as they are; lossy (`qp=0..51`) first scales them to the full range of the
frame's bit depth and scales back with rounding on decode. Frames are padded (edge replicated) to
a multiple of 8 and at least 16 on each side, which x265 needs, and cropped on decode.

`HevcCodec` (registered) codes each image as one intra frame with one ffmpeg run per call
(40-120 ms of process start-up). For video, `HevcStreamEncoder` and `HevcStreamDecoder` keep one
long-lived ffmpeg process per side and stream, with inter prediction: each payload is exactly one
HEVC access unit (Annex B), so payloads of both classes are the same `hevc` format and an intra
payload from a stream decodes on its own. Frame boundaries come from a second muxer on the
encoder (ffmpeg `tee` to `framecrc`, which prints every packet's size on a spare pipe); the
decoder gets an access unit delimiter after each unit so its parser releases the frame at once.
The ffmpeg binary is `$BAF_FFMPEG` or `ffmpeg` on PATH (version 5.1 or later, built with libx265).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from typing import ClassVar

import numpy as np

from baf.codecs import register
from baf.codecs._common import check_bits, check_decoded, check_image, check_shape, dtype_for
from baf.errors import CodecError, CodecUnavailableError

log = logging.getLogger(__name__)

MAX_BITS = 12
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_PIX_FMT = {8: "gray", 10: "gray10le", 12: "gray12le"}
_AUD = b"\x00\x00\x00\x01\x46\x01\x50"  # access unit delimiter NAL (type 35, pic_type 2)
_IRAP = range(16, 24)  # NAL types of random access points (BLA, IDR, CRA)


@functools.lru_cache(maxsize=None)
def _checked_binary(path: str) -> str:
    """`path` if it runs and lists libx265 among its encoders (asked once per path)."""
    try:
        out = subprocess.run([path, "-hide_banner", "-encoders"], capture_output=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise CodecUnavailableError(f"hevc: cannot run ffmpeg at {path}: {e}") from None
    if b"libx265" not in out:
        raise CodecUnavailableError(f"hevc: {path} was built without libx265; install an ffmpeg that has it")
    return path


def ffmpeg_path() -> str:
    """The ffmpeg to run: `$BAF_FFMPEG` or `ffmpeg` on PATH (video sources use it too)."""
    path = os.environ.get("BAF_FFMPEG") or shutil.which("ffmpeg")
    if not path:
        raise CodecUnavailableError("ffmpeg not found on PATH; install it (apt-get install ffmpeg) or set BAF_FFMPEG")
    return path


def ffmpeg_binary() -> str:
    """`ffmpeg_path()`, checked to have libx265."""
    return _checked_binary(ffmpeg_path())


def _nal_headers(data: bytes) -> list[int]:
    """Offsets of the NAL unit headers in an Annex B byte stream (just after each start code)."""
    found, pos = [], data.find(b"\x00\x00\x01")
    while 0 <= pos < len(data) - 3:
        found.append(pos + 3)
        pos = data.find(b"\x00\x00\x01", pos + 3)
    return found


def nal_types(data: bytes) -> list[int]:
    """The NAL unit types in an Annex B byte stream, in order."""
    return [(data[at] >> 1) & 0x3F for at in _nal_headers(data)]


def pictures(data: bytes) -> int:
    """How many pictures an Annex B byte stream starts: VCL units with first_slice_segment_in_pic_flag."""
    return sum(
        1 for at in _nal_headers(data) if (data[at] >> 1) & 0x3F < 32 and at + 2 < len(data) and data[at + 2] & 0x80
    )


def is_intra(data: bytes) -> bool:
    """Whether an access unit holds a random access point (IDR/CRA/BLA), decodable on its own."""
    return any(t in _IRAP for t in nal_types(data))


def _import_ffmpeg():  # noqa: ANN202  the module has no type hints
    try:
        import ffmpeg
    except ImportError:
        raise CodecUnavailableError("hevc: ffmpeg-python is not installed; pip install ffmpeg-python") from None
    return ffmpeg


class _Frames:
    """Conversion between n-bit tiled images and padded gray frames of 8, 10 or 12 bits."""

    def __init__(self, codec: str, bits: int, qp: int | None, preset: str) -> None:
        self.bits = check_bits(codec, bits, MAX_BITS)
        if qp is not None and not (isinstance(qp, int) and not isinstance(qp, bool) and 0 <= qp <= 51):
            raise CodecError(f"{codec}: qp must be an int in 0..51 or None for lossless, got {qp!r}")
        if preset not in PRESETS:
            raise CodecError(f"{codec}: preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.codec, self.qp_or_none, self.preset = codec, qp, preset
        self.depth = 8 if bits <= 8 else 10 if bits <= 10 else 12
        self.pix_fmt = _PIX_FMT[self.depth]
        self._frame_dtype = np.dtype(np.uint8) if self.depth == 8 else np.dtype("<u2")
        # lossy coding spreads the values over the frame's full range; lossless keeps them as they are
        self._scaled = qp is not None and self.depth != bits

    @staticmethod
    def padded(shape: tuple[int, int]) -> tuple[int, int]:
        """Frame size for an image: each side rounded up to a multiple of 8, at least 16."""
        return max(16, -(-shape[0] // 8) * 8), max(16, -(-shape[1] // 8) * 8)

    def frame_bytes(self, shape: tuple[int, int]) -> int:
        """Bytes of one raw frame for an image of `shape`."""
        h, w = self.padded(shape)
        return h * w * self._frame_dtype.itemsize

    def x265_params(self, extra: str = "") -> str:
        """The -x265-params value: lossless or constant QP, quiet, plus `extra`."""
        mode = "lossless=1" if self.qp_or_none is None else f"qp={self.qp_or_none}"
        return f"{mode}:log-level=error{extra}"

    def to_frame(self, image: np.ndarray) -> bytes:
        """The raw frame for an image: values scaled (lossy only), padded, in the frame's dtype."""
        image = check_image(self.codec, image, self.bits)
        h, w = self.padded(image.shape)
        frame = np.pad(image, ((0, h - image.shape[0]), (0, w - image.shape[1])), mode="edge")
        if self._scaled:
            top, full = (1 << self.bits) - 1, (1 << self.depth) - 1
            frame = (frame.astype(np.uint32) * full + top // 2) // top
        return frame.astype(self._frame_dtype).tobytes()

    def from_frame(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """The image in a raw frame: cropped to `shape`, values scaled back with rounding (lossy only)."""
        image = np.frombuffer(data, self._frame_dtype).reshape(self.padded(shape))[: shape[0], : shape[1]]
        if self._scaled:
            top, full = (1 << self.bits) - 1, (1 << self.depth) - 1
            image = np.minimum((image.astype(np.uint32) * top + full // 2) // full, top)
        return check_decoded(self.codec, image.astype(dtype_for(self.bits)), shape, self.bits)


def _stderr_tail(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _run_once(args: list[str], data: bytes, timeout_s: float, what: str) -> bytes:
    """Run one ffmpeg to completion on `data`; its stdout, or CodecError with ffmpeg's last line."""
    try:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise CodecUnavailableError(f"hevc: cannot start ffmpeg: {e}") from None
    try:
        out, err = proc.communicate(data, timeout=timeout_s)  # communicate drains both pipes: no deadlock
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CodecError(f"hevc: ffmpeg {what} took longer than {timeout_s:g} s; killed") from None
    if proc.returncode != 0:
        raise CodecError(f"hevc: ffmpeg {what} failed (exit {proc.returncode}): {_stderr_tail(err)}")
    return out


@register
class HevcCodec:
    """HEVC intra coding of single frames; `qp=None` is lossless, else constant QP 0..51."""

    name: ClassVar[str] = "hevc"
    wire_id: ClassVar[int] = 2
    supports_lossy: ClassVar[bool] = True
    supports_inter: ClassVar[bool] = True  # through HevcStreamEncoder; this class writes intra frames only

    def __init__(
        self, *, bits: int = 8, qp: int | None = None, preset: str = "medium", timeout_s: float = 30.0
    ) -> None:
        self._frames = _Frames(self.name, bits, qp, preset)
        self._ffmpeg = _import_ffmpeg()
        self._binary = ffmpeg_binary()
        self.bits, self.lossless, self.qp = bits, qp is None, qp or 0
        self.timeout_s = timeout_s

    def encode(self, image: np.ndarray) -> bytes:
        """One intra-coded access unit (parameter sets included) for the image."""
        frame = self._frames.to_frame(image)
        h, w = self._frames.padded(image.shape)
        args = (
            self._ffmpeg.input("pipe:", format="rawvideo", pix_fmt=self._frames.pix_fmt, s=f"{w}x{h}")
            .output("pipe:", format="hevc", vcodec="libx265", preset=self._frames.preset, tune="zerolatency",
                    **{"x265-params": self._frames.x265_params()})
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=self._binary)
        )
        return _run_once(args, frame, self.timeout_s, "encode")

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Decode one access unit into an image of `shape`."""
        shape = check_shape(self.name, shape)
        if not is_intra(data):
            raise CodecError("hevc: payload has no intra picture; single-frame decoding needs one")
        args = (
            self._ffmpeg.input("pipe:", format="hevc")
            .output("pipe:", format="rawvideo", pix_fmt=self._frames.pix_fmt, vframes=1)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=self._binary)
        )
        out = _run_once(args, data, self.timeout_s, "decode")
        if len(out) != self._frames.frame_bytes(shape):
            raise CodecError(f"hevc: payload decodes to {len(out)} bytes, expected one {shape[0]}x{shape[1]} frame")
        return self._frames.from_frame(out, shape)

    def is_intra(self, data: bytes) -> bool:
        """Whether `data` holds a random access point (always, for payloads this class wrote)."""
        return is_intra(data)


class _Process:
    """One long-lived ffmpeg: a thread feeds stdin, threads drain stdout, stderr and the framing pipe.

    Every wait is bounded; a process that stops answering is killed by the caller.
    """

    def __init__(self, args: list[str], role: str, framing_fd: int | None = None) -> None:
        self.role = role
        self._out = bytearray()
        self._eof = False
        self._cond = threading.Condition()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._sizes: queue.Queue[int | None] = queue.Queue()
        self._writes: queue.Queue[bytes | None] = queue.Queue()
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=() if framing_fd is None else (framing_fd,),
            )
        except OSError as e:
            raise CodecUnavailableError(f"hevc: cannot start ffmpeg: {e}") from None
        self._threads = [
            threading.Thread(target=self._write_stdin, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        log.debug("ffmpeg started role=%s pid=%d", role, self.proc.pid)

    def add_framing(self, read_fd: int) -> None:
        """Read framecrc lines (one per packet; field 5 is its size) from `read_fd` on a thread."""
        t = threading.Thread(target=self._read_framing, args=(read_fd,), daemon=True)
        t.start()
        self._threads.append(t)

    def _write_stdin(self) -> None:
        try:
            for data in iter(self._writes.get, None):
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            self.proc.stdin.close()
        except (OSError, ValueError):  # the process died or was killed; readers report it
            pass

    def _read_stdout(self) -> None:
        while chunk := self.proc.stdout.read1(1 << 16):
            with self._cond:
                self._out += chunk
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self._stderr.append(text)
                log.debug("ffmpeg role=%s stderr=%s", self.role, text)

    def _read_framing(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as lines:
            for line in lines:
                if not line.startswith(b"#"):
                    try:
                        self._sizes.put(int(line.split(b",")[4]))
                    except (IndexError, ValueError):
                        log.warning("ffmpeg role=%s unreadable framecrc line=%r", self.role, line[:80])
        self._sizes.put(None)

    def reason(self) -> str:
        """ffmpeg's last stderr line, or its exit status."""
        code = self.proc.poll()
        last = self._stderr[-1] if self._stderr else "no message"
        return f"{last} (exit {code})" if code is not None else last

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def pending(self) -> int:
        """Bytes of stdout received and not yet read."""
        with self._cond:
            return len(self._out)

    def send(self, data: bytes) -> None:
        """Queue bytes for ffmpeg's stdin (written by the writer thread, never blocking the caller)."""
        self._writes.put(data)

    def next_size(self, deadline: float) -> int:
        """The size of the next packet the encoder wrote, waiting until `deadline` (monotonic)."""
        try:
            size = self._sizes.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise CodecError(f"hevc: ffmpeg {self.role} produced no packet in time") from None
        if size is None:
            raise CodecError(f"hevc: ffmpeg {self.role} stopped: {self.reason()}")
        return size

    def read_exact(self, n: int, deadline: float) -> bytes:
        """Exactly `n` bytes of stdout, waiting until `deadline` (monotonic)."""
        with self._cond:
            while len(self._out) < n and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CodecError(f"hevc: ffmpeg {self.role} produced no output in time")
                self._cond.wait(left)
            if len(self._out) < n:
                raise CodecError(f"hevc: ffmpeg {self.role} stopped: {self.reason()}")
            out = bytes(self._out[:n])
            del self._out[:n]
            return out

    def close(self, wait_s: float = 5.0) -> None:
        """End stdin, give ffmpeg `wait_s` to exit, then kill it; joins the threads."""
        self._writes.put(None)
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self._threads:
            t.join(wait_s)

    def kill(self) -> None:
        """Kill the process now (its pipes close, so every thread ends)."""
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self._writes.put(None)


class _StreamSide:
    """What both stream classes share: options, the current process and its frame size."""

    name: ClassVar[str] = "hevc"
    wire_id: ClassVar[int] = HevcCodec.wire_id
    supports_lossy: ClassVar[bool] = True
    supports_inter: ClassVar[bool] = True

    def __init__(self, bits: int, qp: int | None, preset: str, timeout_s: float) -> None:
        self._frames = _Frames(self.name, bits, qp, preset)
        self._ffmpeg = _import_ffmpeg()
        self._binary = ffmpeg_binary()
        self.bits, self.lossless, self.qp = bits, qp is None, qp or 0
        self.timeout_s = timeout_s
        self._proc: _Process | None = None
        self._shape: tuple[int, int] | None = None

    def is_intra(self, data: bytes) -> bool:
        """Whether the access unit is a random access point (the first after every (re)start is)."""
        return is_intra(data)

    def _stop(self, reason: str | None) -> None:
        """Drop the process: closed politely when `reason` is None, killed otherwise."""
        if self._proc is None:
            return
        if reason is None:
            self._proc.close()
        else:
            log.warning("hevc stream process killed role=%s reason=%s; next frame is intra", self._proc.role, reason)
            self._proc.kill()
        self._proc = None

    def close(self) -> None:
        """End the ffmpeg process of this stream."""
        self._stop(None)

    def __enter__(self):  # noqa: ANN204  returns the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self._proc.kill()


class HevcStreamEncoder(_StreamSide):
    """Per-stream HEVC encoder: one ffmpeg/x265 process, inter prediction, an IDR every `keyint` frames.

    If the process dies, the frame is coded again by a new process, whose first frame is intra so the
    decoder can resync; if it stops answering, or a new process fails too, the frame fails with
    CodecError and the next frame starts a new process.
    """

    def __init__(
        self, *, bits: int = 8, qp: int | None = None, preset: str = "medium", keyint: int = 64, timeout_s: float = 10.0
    ) -> None:
        super().__init__(bits, qp, preset, timeout_s)
        if not (isinstance(keyint, int) and keyint >= 1):
            raise CodecError(f"hevc: keyint must be an int >= 1, got {keyint!r}")
        self.keyint = keyint

    def _start(self, shape: tuple[int, int]) -> _Process:
        h, w = self._frames.padded(shape)
        read_fd, write_fd = os.pipe()
        # zerolatency: no lookahead or B-frames; with one frame thread (x265 picks 2 for some sizes even
        # then), every input frame leaves as one packet at once
        params = self._frames.x265_params(f":frame-threads=1:repeat-headers=1:open-gop=0:keyint={self.keyint}")
        args = (
            self._ffmpeg.input("pipe:", format="rawvideo", pix_fmt=self._frames.pix_fmt, s=f"{w}x{h}", r=25)
            .output(f"[f=hevc]pipe\\:1|[f=framecrc]pipe\\:{write_fd}", format="tee", map="0:v", vcodec="libx265",
                    preset=self._frames.preset, tune="zerolatency", flush_packets=1, **{"x265-params": params})
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=self._binary)
        )
        try:
            proc = _Process(args, "encoder", framing_fd=write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        proc.add_framing(read_fd)
        return proc

    def encode(self, image: np.ndarray) -> bytes:
        """One access unit for the image: inter-coded against earlier frames unless it starts a GOP."""
        frame = self._frames.to_frame(image)
        if self._proc is not None and self._shape != image.shape:
            self._stop(None)
        if self._proc is not None and not self._proc.alive:
            self._stop(f"ffmpeg exited: {self._proc.reason()}")
        fresh = self._proc is None
        if fresh:
            self._proc, self._shape = self._start(image.shape), image.shape
        deadline = time.monotonic() + self.timeout_s
        try:
            self._proc.send(frame)
            data = self._proc.read_exact(self._proc.next_size(deadline), deadline)
        except CodecError as e:
            died = not self._proc.alive
            self._stop(str(e))
            if fresh or not died:
                raise
            # The process died under this frame (killed, crashed): code it again in a new one, as an intra frame.
            return self.encode(image)
        if not data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
            self._stop("packet does not start with a start code")
            raise CodecError("hevc: encoder output lost its framing; restarting")
        return data


class HevcStreamDecoder(_StreamSide):
    """Per-stream HEVC decoder: one ffmpeg process fed one access unit per frame.

    After a (re)start it accepts only an intra access unit; inter units before that raise
    CodecError. A unit that yields no frame within `timeout_s` kills the process the same way.
    """

    def __init__(self, *, bits: int = 8, lossless: bool = True, timeout_s: float = 3.0) -> None:
        super().__init__(bits, None if lossless else 0, "medium", timeout_s)  # qp and preset only matter to encoders

    def _start(self) -> _Process:
        args = (
            self._ffmpeg.input("pipe:", format="hevc", probesize=32, analyzeduration=0, flags="low_delay", threads=1)
            # threads=1 on the output too: a frame-threaded rawvideo encoder holds one frame back
            .output("pipe:", format="rawvideo", pix_fmt=self._frames.pix_fmt, threads=1, fps_mode="passthrough",
                    flush_packets=1)
            .global_args("-hide_banner", "-loglevel", "error", "-nostdin")
            .compile(cmd=self._binary)
        )
        return _Process(args, "decoder")

    def decode(self, data: bytes, shape: tuple[int, int]) -> np.ndarray:
        """Decode the stream's next access unit into an image of `shape`."""
        shape = check_shape(self.name, shape)
        if pictures(data) != 1:  # one unit must give exactly one frame, or later frames would shift
            raise CodecError(f"hevc: payload starts {pictures(data)} pictures, expected one access unit")
        if self._proc is not None and self._shape != shape:
            self._stop(None)
        if self._proc is not None and not self._proc.alive:
            self._stop(f"ffmpeg exited: {self._proc.reason()}")
        if self._proc is not None and self._proc.pending():
            self._stop("decoder produced more frames than access units")
        if self._proc is None:
            if not is_intra(data):
                raise CodecError("hevc: inter frame without its reference; waiting for the next intra frame")
            self._proc, self._shape = self._start(), shape
        deadline = time.monotonic() + self.timeout_s
        try:
            self._proc.send(data + _AUD)  # the delimiter ends this unit for ffmpeg's parser
            out = self._proc.read_exact(self._frames.frame_bytes(shape), deadline)
        except CodecError as e:
            self._stop(str(e))
            raise
        return self._frames.from_frame(out, shape)
