"""`baf.v1.DetectionService`: frames in, detections out, per-frame errors in-band on streams.

A stream reads frames in order, decodes each on the decode pool (one `FrameDecoder` per stream keeps
hevc state), and hands decoded frames to the shared `Batcher`; up to `stream_window` frames of a stream
are in flight, and answers leave in the order frames came. Errors map from our exception types through
one table to a `FrameErrorCode` (streams) or a gRPC status (unary calls).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import grpc
import torch

from baf import __version__, bitstream
from baf.bitstream import Header
from baf.cloud import CloudPipeline, DecodedFrame, FrameDecoder, StageTimer
from baf.errors import (
    BitstreamError, CodecError, CodecUnavailableError, FrameDeadlineError, FrameTooLargeError,
    HeaderMismatchError, OverloadedError, SequenceError,
)  # fmt: skip
from baf.models.zoo import get_spec
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from server.batching import Batcher, FrameOutcome
from server.metrics import STAGES, Metrics

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DetectionService"].full_name
_E = pb.FrameErrorCode
_S = grpc.StatusCode
# First match wins: (our exception, in-band code, unary status). Anything else is INTERNAL.
ERROR_TABLE: tuple[tuple[type[BaseException], int, grpc.StatusCode], ...] = (
    (FrameTooLargeError, _E.FRAME_ERROR_CODE_TOO_LARGE, _S.RESOURCE_EXHAUSTED),
    (SequenceError, _E.FRAME_ERROR_CODE_OUT_OF_ORDER, _S.INVALID_ARGUMENT),
    (OverloadedError, _E.FRAME_ERROR_CODE_DROPPED, _S.RESOURCE_EXHAUSTED),
    (FrameDeadlineError, _E.FRAME_ERROR_CODE_DEADLINE_EXCEEDED, _S.DEADLINE_EXCEEDED),
    (HeaderMismatchError, _E.FRAME_ERROR_CODE_UNSUPPORTED, _S.INVALID_ARGUMENT),
    (CodecUnavailableError, _E.FRAME_ERROR_CODE_UNSUPPORTED, _S.INVALID_ARGUMENT),
    (BitstreamError, _E.FRAME_ERROR_CODE_MALFORMED_BITSTREAM, _S.INVALID_ARGUMENT),
    (CodecError, _E.FRAME_ERROR_CODE_MALFORMED_BITSTREAM, _S.INVALID_ARGUMENT),
)
INTERNAL_MESSAGE = "internal server error; the server logged the details"


def classify(error: BaseException) -> tuple[int, grpc.StatusCode, str]:
    """(FrameErrorCode, unary status, user-facing message) of an exception; unknown ones stay private."""
    for kind, code, status in ERROR_TABLE:
        if isinstance(error, kind):
            return code, status, str(error)
    return _E.FRAME_ERROR_CODE_INTERNAL, _S.INTERNAL, INTERNAL_MESSAGE


def status_label(code: int) -> str:
    """The baf_frames_total status label of a FrameErrorCode, e.g. malformed_bitstream."""
    return _E.Name(code).removeprefix("FRAME_ERROR_CODE_").lower()


@dataclass(frozen=True)
class Served:
    """What the pipeline serves beyond its model: the C and n values (empty: any), and the checkpoint."""

    channels: tuple[int, ...] = ()
    bits: tuple[int, ...] = ()
    restoration: str = "zeros"
    checkpoint: str = ""
    codecs: tuple[str, ...] = ()


@dataclass
class _Pending:
    """One stream frame between arrival and answer."""

    sequence: int
    arrived: float
    size: int
    stages: dict[str, float] = field(default_factory=dict)
    future: asyncio.Future[FrameOutcome] | None = None
    error: BaseException | None = None


class DetectionServicer(pb_grpc.DetectionServiceServicer):
    """The service; `draining` set means: take no new frames, finish the ones in flight."""

    def __init__(
        self,
        pipeline: CloudPipeline,
        batcher: Batcher,
        metrics: Metrics,
        decode_pool: Executor,
        served: Served,
        *,
        max_frame_bytes: int,
        stream_window: int,
        max_batch: int,
        max_queue: int,
        max_streams_per_client: int | None = None,
    ) -> None:
        self._pipeline, self._batcher, self._m = pipeline, batcher, metrics
        self._pool, self._served = decode_pool, served
        self._max_frame_bytes, self._window = max_frame_bytes, stream_window
        self._max_streams_per_client = max_streams_per_client
        self._streams_of: collections.Counter[str] = collections.Counter()  # open Stream calls per client_identity
        self.draining = asyncio.Event()
        self._calls = 0  # Stream and DetectFrame calls running
        self._idle = asyncio.Event()
        self._idle.set()
        spec = get_spec(pipeline.split.model.name)
        self._names, self._categories = spec.class_names, spec.category_ids
        self._capabilities = self._describe(max_batch, max_queue)

    async def wait_idle(self) -> None:
        """Return once no Stream or DetectFrame call is running."""
        await self._idle.wait()

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        self._calls += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._calls -= 1
            if self._calls == 0:
                self._idle.set()

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._pipeline.split.conv.weight.device

    def _describe(self, max_batch: int, max_queue: int) -> pb.GetCapabilitiesResponse:
        p, s = self._pipeline, self._served
        return pb.GetCapabilitiesResponse(
            models=[pb.ModelCapability(
                model=p.split.model.name, split_layer=p.split.layer, channels_total=p.split.channels,
                ranking_ids=list(p.restorers), channels=list(s.channels), bits=list(s.bits),
                restoration=s.restoration, checkpoint=s.checkpoint, class_names=list(self._names),
            )],
            codecs=list(s.codecs),
            limits=pb.Limits(max_frame_bytes=self._max_frame_bytes, max_batch=max_batch, max_queue=max_queue),
            server_version=__version__,
        )  # fmt: skip

    # ------------------------------------------------------------------ RPCs

    async def GetCapabilities(self, request: pb.GetCapabilitiesRequest,
                              context: grpc.aio.ServicerContext) -> pb.GetCapabilitiesResponse:
        """What this server serves (built once at start-up)."""
        return self._capabilities

    async def DetectFrame(self, request: pb.DetectFrameRequest,
                          context: grpc.aio.ServicerContext) -> pb.DetectFrameResponse:
        """One frame; failures end the call with a status naming the failed check."""
        with self._call():
            return await self._detect_frame(request, context)

    async def _detect_frame(self, request: pb.DetectFrameRequest,
                            context: grpc.aio.ServicerContext) -> pb.DetectFrameResponse:
        if self.draining.is_set():
            await context.abort(_S.UNAVAILABLE, "server is draining; retry on another instance")
        p = _Pending(0, time.perf_counter(), len(request.bitstream))
        self._m.frame_bytes.observe(p.size)
        try:
            self._check_size(p.size)
            if _parse_header(request.bitstream).inter:
                raise HeaderMismatchError("inter-coded frames need the earlier frames of their stream: use Stream")
            loop = asyncio.get_running_loop()
            decoder = _Decoder(self._pipeline.stream())
            try:
                frame = await loop.run_in_executor(self._pool, self._decode, decoder, request.bitstream, p.stages)
            finally:
                await loop.run_in_executor(self._pool, decoder.close)
            outcome = await self._batcher.submit(frame, _deadline(context))
        except Exception as e:
            code, status, message = classify(e)
            self._finish(p, "DetectFrame", status_label(code), e)
            await context.abort(status, message)
        self._finish(p, "DetectFrame", "ok")
        return pb.DetectFrameResponse(result=self._result(p, outcome))

    async def Stream(self, requests: AsyncIterator[pb.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        """Frames in, one answer per frame out, in order; see the proto for which faults end the call."""
        with self._client_stream(context) as admitted:
            if not admitted:
                self._m.refused_calls.labels("streams_per_client").inc()
                log.info("refused stream reason=streams-per-client limit=%d", self._max_streams_per_client)
                await context.abort(_S.RESOURCE_EXHAUSTED, f"this client already has {self._max_streams_per_client} "
                                    "streams open, the server's --max-streams-per-client; close one first")
            async for response in self._stream(requests, context):
                yield response

    @contextlib.contextmanager
    def _client_stream(self, context: grpc.aio.ServicerContext) -> Iterator[bool]:
        """Count one open stream of the calling client while the block runs; yields False when over its limit."""
        if self._max_streams_per_client is None:
            yield True
            return
        client = client_identity(context)
        if self._streams_of[client] >= self._max_streams_per_client:
            yield False
            return
        self._streams_of[client] += 1
        try:
            yield True
        finally:
            self._streams_of[client] -= 1
            if not self._streams_of[client]:
                del self._streams_of[client]

    async def _stream(self, requests: AsyncIterator[pb.StreamRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        with self._call():
            self._m.active_streams.inc()
            decoder = _Decoder(self._pipeline.stream())
            pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
            window = asyncio.Semaphore(self._window)  # frames read but not yet answered
            reader = asyncio.create_task(self._read(requests, context, decoder, pending, window))
            try:
                while (p := await _next(pending, reader)) is not None:
                    response = await self._answer(p)
                    window.release()
                    yield response
                if await reader:  # stopped reading because the server drains
                    await context.abort(_S.UNAVAILABLE, "server is draining; reconnect to continue")
            finally:
                # Bookkeeping first, then one shielded await: a second cancellation of the call (gRPC may deliver
                # one while this block awaits) must neither skip the gauge nor abandon the decoder's close.
                self._m.active_streams.dec()
                reader.cancel()
                while not pending.empty():
                    left = pending.get_nowait()
                    if left is not None and left.future is not None:
                        left.future.cancel()
                await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._pool, decoder.close))

    # ------------------------------------------------------------------ stream pieces

    async def _read(self, requests: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext,
                    decoder: _Decoder, pending: asyncio.Queue[_Pending | None], window: asyncio.Semaphore) -> bool:
        """Decode and submit frames until the client half-closes (False) or the server drains (True)."""
        loop = asyncio.get_running_loop()
        draining = asyncio.ensure_future(self.draining.wait())
        iterator = aiter(requests)
        last: int | None = None
        try:
            while True:
                await window.acquire()  # backpressure: the client's sends wait in gRPC flow control
                incoming = asyncio.ensure_future(anext(iterator, None))
                await _wait_first(incoming, draining)
                if not incoming.done():
                    incoming.cancel()
                    await pending.put(None)
                    return True
                request = incoming.result()
                if request is None:
                    await pending.put(None)
                    return False
                p = _Pending(request.sequence, time.perf_counter(), len(request.bitstream))
                self._m.frame_bytes.observe(p.size)
                try:
                    if last is not None and request.sequence <= last:
                        raise SequenceError(f"sequence {request.sequence} is not greater than the previous {last}")
                    last = request.sequence
                    self._check_size(p.size)
                    frame = await loop.run_in_executor(self._pool, self._decode, decoder, request.bitstream,
                                                       p.stages)
                    p.future = self._batcher.submit(frame, _deadline(context))
                except Exception as e:  # answered in-band, in order, by _answer
                    p.error = e
                await pending.put(p)
        finally:
            draining.cancel()

    async def _answer(self, p: _Pending) -> pb.StreamResponse:
        try:
            if p.error is not None:
                raise p.error
            assert p.future is not None
            outcome = await p.future
        except Exception as e:
            code, _, message = classify(e)
            self._finish(p, "Stream", status_label(code), e)
            return pb.StreamResponse(sequence=p.sequence, error=pb.FrameError(code=code, message=message))
        self._finish(p, "Stream", "ok")
        return pb.StreamResponse(sequence=p.sequence, result=self._result(p, outcome))

    # ------------------------------------------------------------------ shared

    def _check_size(self, size: int) -> None:
        if size > self._max_frame_bytes:
            raise FrameTooLargeError(f"bitstream of {size:,} bytes exceeds the server's {self._max_frame_bytes:,}")

    def _decode(self, decoder: _Decoder, data: bytes, stages: dict[str, float]) -> DecodedFrame:
        """On the decode pool: parse, check, decode, dequantize; then refuse what the model side cannot serve."""

        def timer(stage: str, seconds: float) -> None:
            stages[stage] = seconds
            self._m.observe_stage(stage, seconds)

        frame = decoder.decode(data, timer)
        self._check_served(frame.header)
        return frame

    def _check_served(self, h: Header) -> None:
        s = self._served
        if s.channels and h.channels not in s.channels:
            raise HeaderMismatchError(f"C={h.channels} is not served; this server serves C in {list(s.channels)}")
        if s.bits and h.bits not in s.bits:
            raise HeaderMismatchError(f"n={h.bits} is not served; this server serves n in {list(s.bits)}")
        self._pipeline.letterbox(h)  # BitstreamError now, rather than failing the batch it would join

    def _finish(self, p: _Pending, method: str, status: str, error: BaseException | None = None) -> None:
        self._m.frames.labels(status).inc()
        self._m.request_latency.labels(method).observe(time.perf_counter() - p.arrived)
        if status == "internal":
            log.error("frame failed method=%s sequence=%d", method, p.sequence, exc_info=error)
        elif error is not None:
            log.debug("frame refused method=%s sequence=%d status=%s reason=%s", method, p.sequence, status, error)

    def _result(self, p: _Pending, o: FrameOutcome) -> pb.FrameResult:
        stages = {**p.stages, **o.stages}
        detections = [
            pb.Detection(box=pb.BoundingBox(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), score=score, class_index=label,
                         category_id=self._categories[label], class_name=self._names[label])
            for b, score, label in zip(o.boxes, o.scores, o.labels, strict=True)
        ]  # fmt: skip
        timings = pb.FrameTimings(
            queue_ms=o.queued * 1e3, total_ms=(time.perf_counter() - p.arrived) * 1e3, batch_size=o.batch_size,
            **{f"{stage}_ms": stages.get(stage, 0.0) * 1e3 for stage in STAGES},
        )  # fmt: skip
        return pb.FrameResult(detections=detections, bytes_received=p.size, timings=timings)


class _Decoder:
    """A stream's FrameDecoder used from pool threads: a decode still running when its call is cancelled
    finishes before `close` ends the decoder (hevc keeps an ffmpeg process per stream)."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self._decoder = decoder
        self._lock = threading.Lock()

    def decode(self, data: bytes, timer: StageTimer) -> DecodedFrame:
        with self._lock:
            return self._decoder.decode(data, timer)

    def close(self) -> None:
        with self._lock:
            self._decoder.close()


async def _next(pending: asyncio.Queue[_Pending | None], reader: asyncio.Task[bool]) -> _Pending | None:
    """The next frame to answer; if the reader failed instead, its error."""
    getter = asyncio.ensure_future(pending.get())
    await _wait_first(getter, reader)
    if getter.done():
        return getter.result()
    getter.cancel()
    reader.result()  # raises what ended the reader; a reader that returned has queued its None
    return await pending.get()


async def _wait_first(mine: asyncio.Future[object], other: asyncio.Future[object]) -> None:
    """Wait until `mine` or `other` is done; if the wait is cancelled, cancel `mine` too (a stream ending
    must not leave a read pending on its queue or request iterator)."""
    try:
        await asyncio.wait({mine, other}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        mine.cancel()
        raise


def client_identity(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, for per-client limits: the mTLS certificate's common name, else the peer's address
    without its port (every connection from one host is one client)."""
    names = context.auth_context().get("x509_common_name")
    if names:
        return "cn:" + names[0].decode(errors="replace")
    peer = context.peer() or ""
    return "peer:" + (peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer)


def _parse_header(data: bytes) -> Header:
    return bitstream.parse(data).header


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a time.monotonic() value, or None without one."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
