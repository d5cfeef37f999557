"""The streaming client: source frames -> edge encoder -> the bidirectional Stream RPC -> one outcome per frame.

Three single-thread executors keep the event loop free: one reads the source and runs the edge half,
one quantizes and codes (the codec, and the hevc stream encoder's state, belong to that thread), one
writes outputs. At most `window` frames are in flight without a result, so the server can batch them.

Reconnecting: the Stream call is reopened on a fresh channel after UNAVAILABLE (or grpc aio's INTERNAL
that hides it, see `stream_lost`, or a stream that ends with frames unanswered), with jittered
exponential backoff (x1.6, +-20%, capped; grpc's connection-backoff.md), and every frame without a
result is resent, in order, under its own sequence. Outcomes are keyed by sequence, so each frame is
reported exactly once. With the hevc stream codec each new connection restarts the encoder, so the first
resent frame is intra (the server's per-stream decoder is new); an error answer restarts it too. The
client gives up when no frame has been answered for `reconnect_timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

import grpc
import numpy as np
from PIL import Image

from baf.edge import EdgeConfig, EdgeEncoder
from baf.errors import BafError, ServerError
from baf.images import Letterbox
from baf.sources import Source, SourceFrame, open_source
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from client.config import DEFAULT_BITS, DEFAULT_CHANNELS, ClientConfig
from client.output import (
    AnnotatedVideo, Detection, FrameOutcome, JsonLinesWriter, ProgressLine, Summary,
)  # fmt: skip
from client.rate import RateController, Rung, build_ladder

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
# Served values assumed when GetCapabilities leaves a list empty ("every value"): the ladder needs steps.
LADDER_CHANNELS: tuple[int, ...] = (8, 16, 32, 64, 128)
LADDER_BITS: tuple[int, ...] = tuple(range(2, 9))


def server_error(e: grpc.aio.AioRpcError, server: str, what: str) -> ServerError:
    """Our error for a failed call: one line naming the server, the status and what to do about it."""
    code, details = e.code(), (e.details() or "").strip()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ServerError(f"{server} refused the {what} call: UNAUTHENTICATED ({details}); "
                           "check --token-file / BAF_TOKEN")  # fmt: skip
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServerError(f"cannot reach the server at {server} ({code.name}: {details}); is it running there?")
    return ServerError(f"{server}: {what} failed with {code.name}: {details}")


# What grpc aio reports in place of the server's status when a client write races the end of the call
# (grpc/grpc#36066): a server that drains aborts with UNAVAILABLE while frames are still being sent.
_WRITE_RACE_DETAILS = "Internal error from Core"


def stream_lost(e: grpc.aio.AioRpcError) -> bool:
    """Whether a failed Stream call lost its server (reconnect and resend) rather than being refused by it.

    UNAVAILABLE is a server that went away or drains; INTERNAL with grpc's own "Internal error from Core"
    is the same loss hidden by grpc aio's write race. An INTERNAL the server sent carries our message.
    """
    code, details = e.code(), (e.details() or "").strip()
    if code == grpc.StatusCode.INTERNAL:
        return details == _WRITE_RACE_DETAILS
    return code == grpc.StatusCode.UNAVAILABLE


@contextlib.asynccontextmanager
async def open_channel(config: ClientConfig) -> AsyncIterator[grpc.aio.Channel]:
    """A fresh channel to the server: TLS (mTLS with a client certificate) or plaintext, closed on exit."""
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20),
               ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)]  # fmt: skip
    if config.tls:
        ca, key, cert = config.read_tls()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.aio.secure_channel(config.server, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(config.server, options=options)
    try:
        yield channel
    finally:
        await channel.close()


def call_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """The per-call metadata: the bearer token, when there is one."""
    token = config.bearer_token()
    return (("authorization", f"Bearer {token}"),) if token else ()


async def get_capabilities(config: ClientConfig) -> pb.GetCapabilitiesResponse:
    """The server's GetCapabilities answer, waiting up to `connect_timeout_s` for the server to come up."""
    async with open_channel(config) as channel:
        try:
            return await pb_grpc.DetectionServiceStub(channel).GetCapabilities(
                pb.GetCapabilitiesRequest(), metadata=call_metadata(config), timeout=config.connect_timeout_s,
                wait_for_ready=True,
            )  # fmt: skip
        except grpc.aio.AioRpcError as e:
            raise server_error(e, config.server, "GetCapabilities") from None


@dataclass(frozen=True)
class Plan:
    """What the server serves that this client will use: the model entry, the rungs, and the frame size limit."""

    model: pb.ModelCapability
    ladder: tuple[Rung, ...]
    start: int
    max_frame_bytes: int


def plan(config: ClientConfig, caps: pb.GetCapabilitiesResponse) -> Plan:
    """Match the config to the server's capabilities: the model and layer, codec, and the C/n it serves."""
    served = [m for m in caps.models if m.model == config.model and config.layer in (None, m.split_layer)]
    if not served:
        offered = ", ".join(f"{m.model} layer {m.split_layer}" for m in caps.models) or "nothing"
        wanted = config.model + (f" layer {config.layer}" if config.layer is not None else "")
        raise ServerError(f"{config.server} does not serve {wanted}; it serves {offered}")
    model = served[0]
    if config.codec not in caps.codecs:
        raise ServerError(f"{config.server} does not decode {config.codec}; it decodes {', '.join(caps.codecs)}")
    channels = tuple(model.channels) or tuple(c for c in LADDER_CHANNELS if c <= model.channels_total)
    bits = tuple(model.bits) or LADDER_BITS
    max_bytes = caps.limits.max_frame_bytes or 2**63
    if config.target_kbps is not None:
        ladder = build_ladder(channels, bits, config.codec)
        middle = next((i for i, r in enumerate(ladder) if r.channels == DEFAULT_CHANNELS), len(ladder) // 2)
        return Plan(model, tuple(ladder), middle, max_bytes)
    rung = Rung(config.channels or DEFAULT_CHANNELS, config.bits or DEFAULT_BITS, config.qp)
    for what, value, values in (("C", rung.channels, model.channels), ("n", rung.bits, model.bits)):
        if values and value not in values:
            raise ServerError(f"{config.server} does not serve {what}={value} for {model.model}; "
                              f"it serves {', '.join(map(str, values))}")  # fmt: skip
    return Plan(model, (rung,), 0, max_bytes)


class EdgeSide:
    """The edge half once (features for the largest C of the ladder), and one encoder per rung used.

    Only the coding thread calls `encode` and `restart`. Switching rungs, or `restart`, closes the hevc
    stream encoders, so the next frame starts a new one, intra-coded.
    """

    def __init__(self, config: ClientConfig, ladder: tuple[Rung, ...], stream: bool) -> None:
        self.config, self.stream = config, stream
        self.base = EdgeEncoder.load(EdgeConfig(
            model=config.model, layer=config.layer, weights=config.weights, ranking=config.ranking,
            channels=max(r.channels for r in ladder), bits=8, codec="raw", size=config.size,
        ))  # fmt: skip
        self._encoders: dict[Rung, EdgeEncoder] = {}
        self._active: Rung | None = None

    def features(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Z of the ladder's largest C, ranked (nested: any smaller C is its first channels), and the placement."""
        return self.base.features(image)

    def encode(self, z: np.ndarray, box: Letterbox, rung: Rung, sequence: int) -> bytes:
        """The bitstream of the first `rung.channels` channels of z, coded with the rung's n and QP."""
        if rung != self._active:
            self.restart()
            self._active = rung
        encoder = self._encoders.get(rung)
        if encoder is None:
            encoder = self._encoders[rung] = EdgeEncoder(
                self.base.split, self.base.ranking, channels=rung.channels, bits=rung.bits, codec=self.config.codec,
                effort=self.config.effort, qp=rung.qp, stream=self.stream, size=self.config.size,
            )  # fmt: skip
        return encoder.encode_features(z[: rung.channels], box, sequence=sequence)

    def restart(self) -> None:
        """End every stream encoder process: the next frame is intra-coded."""
        for encoder in self._encoders.values():
            encoder.close()

    def close(self) -> None:
        """End every encoder process."""
        self.restart()


@dataclass
class _Pending:
    """A frame between its edge half and its answer."""

    sequence: int
    frame: SourceFrame
    z: np.ndarray
    box: Letterbox
    jpeg_bytes: int | None
    data: bytes | None = None
    rung: Rung | None = None
    sent_at: float = 0.0


class _Failed:
    """Carries a task's exception to the consumer of outcomes."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def jpeg_size(frame: SourceFrame, source: Source) -> int:
    """Bytes of the frame as the source JPEG file (image sources), else as a Pillow JPEG at quality 90."""
    if source.kind != "video":
        path = next((p for p in source.files if p.stem == frame.name), None)
        if path is not None and path.suffix.lower() in (".jpg", ".jpeg"):
            return path.stat().st_size
    buffer = io.BytesIO()
    Image.fromarray(frame.image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.tell()


class FrameStreamer:
    """Streams a source's frames through the server; `outcomes()` yields one FrameOutcome per frame, in order."""

    def __init__(
        self,
        config: ClientConfig,
        source: Source,
        edge: EdgeSide,
        plan: Plan,
        *,
        keep_images: bool = False,
    ) -> None:
        self.config, self.source, self.edge, self.plan = config, source, edge, plan
        self.keep_images = keep_images
        self.controller = (
            RateController(plan.ladder, config.target_kbps, start=plan.start, window=max(4, config.window))
            if config.target_kbps is not None
            else None
        )
        self.reconnects = 0
        self._metadata = call_metadata(config)
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="baf-edge")
        self._code_pool = ThreadPoolExecutor(1, thread_name_prefix="baf-code")
        self._pending: dict[int, _Pending] = {}
        self._ready: dict[int, FrameOutcome] = {}
        self._next_sequence = 0
        self._next_out = 0
        self._answered = 0
        self._produced_all = False
        self._epoch = 0
        self._coded_epoch = 0
        self._restart_codec = False
        self._fatal: BaseException | None = None

    def rung(self) -> Rung:
        """The rung for the next frame coded."""
        return self.controller.rung if self.controller is not None else self.plan.ladder[0]

    async def outcomes(self) -> AsyncIterator[FrameOutcome]:
        """Every frame's outcome, in source order; raises the first error that stops the stream."""
        self._slots = asyncio.Semaphore(self.config.window)
        self._out: asyncio.Queue[FrameOutcome | _Failed | None] = asyncio.Queue(maxsize=self.config.window)
        self._outbox: asyncio.Queue[int | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._guard(self._produce())), asyncio.create_task(self._guard(self._connect()))]
        try:
            while (item := await self._out.get()) is not None:
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._code_pool, self.edge.close)
            self._read_pool.shutdown(wait=True)
            self._code_pool.shutdown(wait=True)

    async def _guard(self, work: object) -> None:
        try:
            await work  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # handed to the consumer, which raises it
            await self._out.put(_Failed(e))

    # --- reading and the edge half -------------------------------------------------------------------

    def _prepare(self, frames: Iterator[SourceFrame]) -> tuple[SourceFrame, np.ndarray, Letterbox, int | None] | None:
        frame = next(frames, None)
        if frame is None:
            return None
        z, box = self.edge.features(frame.image)
        jpeg = jpeg_size(frame, self.source) if self.config.compare_jpeg else None
        return frame, z, box, jpeg

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        frames = self.source.frames()
        try:
            while True:
                await self._slots.acquire()
                prepared = await loop.run_in_executor(self._read_pool, self._prepare, frames)
                if prepared is None:
                    self._slots.release()
                    break
                sequence = self._next_sequence
                self._next_sequence += 1
                self._pending[sequence] = _Pending(sequence, *prepared)
                self._outbox.put_nowait(sequence)
            self._produced_all = True
            self._outbox.put_nowait(None)
            if self._next_out == self._next_sequence:
                await self._out.put(None)  # every frame was answered before the source said it had ended
        finally:
            await loop.run_in_executor(self._read_pool, frames.close)  # ends a video's ffmpeg

    # --- coding and sending --------------------------------------------------------------------------

    def _encode(self, p: _Pending, epoch: int) -> bytes:
        """The frame's bitstream for connection `epoch` (coding thread only)."""
        if self.edge.stream and (epoch != self._coded_epoch or self._restart_codec):
            self.edge.restart()  # the server's decoder for this stream is new: start intra
        self._coded_epoch, self._restart_codec = epoch, False
        if p.data is not None and not self.edge.stream:
            return p.data  # intra frames resend as they were
        rung = self.rung()
        p.data = self.edge.encode(p.z, p.box, rung, p.sequence)
        p.rung = rung
        if self.controller is not None:
            self.controller.update(time.monotonic(), len(p.data))
        return p.data

    async def _requests(self, outbox: asyncio.Queue[int | None], epoch: int) -> AsyncIterator[pb.StreamRequest]:
        loop = asyncio.get_running_loop()
        try:
            while (sequence := await outbox.get()) is not None:
                p = self._pending.get(sequence)
                if p is None:
                    continue
                try:
                    data = await loop.run_in_executor(self._code_pool, self._encode, p, epoch)
                except BafError as e:
                    await self._local_error(p, "ENCODE_FAILED", str(e))
                    continue
                if len(data) > self.plan.max_frame_bytes:
                    await self._local_error(p, "TOO_LARGE",
                                            f"{len(data):,} bytes exceed the server's {self.plan.max_frame_bytes:,}")
                    continue
                p.sent_at = time.perf_counter()
                yield pb.StreamRequest(sequence=sequence, bitstream=data)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: remember it, so the call's CANCELLED status does not hide it
            self._fatal = e
            raise

    async def _connect(self) -> None:
        delay = self.config.backoff_initial_s
        last_progress = time.monotonic()
        while True:
            self._epoch += 1
            outbox: asyncio.Queue[int | None] = asyncio.Queue()
            for sequence in sorted(self._pending):
                outbox.put_nowait(sequence)
            if self._produced_all:
                outbox.put_nowait(None)
            self._outbox = outbox
            answered = self._answered
            try:
                async with open_channel(self.config) as channel:
                    call = pb_grpc.DetectionServiceStub(channel).Stream(
                        self._requests(outbox, self._epoch), metadata=self._metadata
                    )
                    async for response in call:
                        await self._answer(response)
                        delay = self.config.backoff_initial_s
                if self._produced_all and not self._pending:
                    return
                reason = f"the server ended the stream with {len(self._pending)} frames unanswered"
            except grpc.aio.AioRpcError as e:
                if self._fatal is not None:
                    raise self._fatal from None
                if not stream_lost(e):
                    raise server_error(e, self.config.server, "Stream") from None
                reason = f"{e.code().name}: {(e.details() or '').strip()}"
            now = time.monotonic()
            if self._answered > answered:
                last_progress = now
            if now - last_progress > self.config.reconnect_timeout_s:
                raise ServerError(f"lost the server at {self.config.server} ({reason}) and no frame was answered "
                                  f"for {self.config.reconnect_timeout_s:g} s; {len(self._pending)} frames unanswered")
            wait = delay * random.uniform(0.8, 1.2)
            log.warning("stream lost reason=%r unanswered=%d retry_in=%.1fs", reason, len(self._pending), wait)
            self.reconnects += 1
            await asyncio.sleep(wait)
            delay = min(delay * 1.6, self.config.backoff_max_s)

    # --- answers -------------------------------------------------------------------------------------

    async def _answer(self, response: pb.StreamResponse) -> None:
        p = self._pending.pop(response.sequence, None)
        if p is None:
            log.debug("ignoring an answer for sequence=%d: not pending (already answered)", response.sequence)
            return
        round_trip_ms = 1000 * (time.perf_counter() - p.sent_at)
        if response.WhichOneof("outcome") == "result":
            r = response.result
            names = self.plan.model.class_names
            detections = tuple(
                Detection((d.box.x1, d.box.y1, d.box.x2, d.box.y2), d.score, d.class_index, d.category_id,
                          d.class_name or (names[d.class_index] if d.class_index < len(names) else ""))
                for d in r.detections
            )  # fmt: skip
            outcome = self._outcome(p, round_trip_ms, detections=detections, server_ms=r.timings.total_ms,
                                    batch_size=r.timings.batch_size or None)  # fmt: skip
        else:
            code = pb.FrameErrorCode.Name(response.error.code).removeprefix("FRAME_ERROR_CODE_")
            # The server may lack this frame as a reference now (dropped, or its hevc decoder restarted and
            # refuses inter frames until an intra one): send an intra frame next.
            self._restart_codec = True
            outcome = self._outcome(p, round_trip_ms, error=(code, response.error.message))
        await self._deliver(outcome)

    async def _local_error(self, p: _Pending, code: str, message: str) -> None:
        self._pending.pop(p.sequence, None)
        log.warning("frame not sent name=%s code=%s reason=%r", p.frame.name, code, message)
        await self._deliver(self._outcome(p, 0.0, error=(code, message)))

    def _outcome(self, p: _Pending, round_trip_ms: float, **fields: object) -> FrameOutcome:
        rung = p.rung or self.rung()
        image = p.frame.image
        return FrameOutcome(
            sequence=p.sequence, index=p.frame.index, name=p.frame.name, width=image.shape[1], height=image.shape[0],
            bytes=len(p.data or b""), channels=rung.channels, bits=rung.bits, codec=self.config.codec, qp=rung.qp,
            round_trip_ms=round_trip_ms, jpeg_bytes=p.jpeg_bytes, image=image if self.keep_images else None,
            **fields,  # type: ignore[arg-type]
        )  # fmt: skip

    async def _deliver(self, outcome: FrameOutcome) -> None:
        """Release the frame's window slot and pass outcomes on in sequence order."""
        self._answered += 1
        self._slots.release()
        self._ready[outcome.sequence] = outcome
        while self._next_out in self._ready:
            await self._out.put(self._ready.pop(self._next_out))
            self._next_out += 1
        if self._produced_all and self._next_out == self._next_sequence:
            await self._out.put(None)


class Sinks:
    """The outputs of one run: JSON lines, annotated video, progress line and summary (output thread only)."""

    def __init__(self, config: ClientConfig, source: Source, progress: TextIO) -> None:
        self.summary = Summary(server=config.server, source=config.source)
        self.progress = ProgressLine(progress, config.progress if config.progress is not None else progress.isatty())
        self.jsonl = JsonLinesWriter(config.output) if config.output is not None else None
        self.video = AnnotatedVideo(config.annotate, source.fps or 10.0) if config.annotate is not None else None

    def write(self, outcome: FrameOutcome) -> None:
        """Record one frame everywhere."""
        self.summary.add(outcome)
        if self.jsonl is not None:
            self.jsonl.write(outcome)
        if self.video is not None and outcome.image is not None:
            self.video.write(outcome.image, outcome.detections)
        self.progress.update(outcome)

    def close(self) -> None:
        """Finish every output (the video's trailer is written here)."""
        self.progress.close()
        if self.jsonl is not None:
            self.jsonl.close()
            self.summary.outputs.append(f"results: {self.jsonl.path}")
        if self.video is not None:
            self.video.close()
            self.summary.outputs.append(f"annotated video: {self.video.path} ({self.video.frames} frames)")


async def stream_async(config: ClientConfig, *, progress: TextIO = sys.stderr) -> Summary:
    """Stream the configured source through the server and write the configured outputs; the summary."""
    source = open_source(config.source, max_frames=config.frames)
    caps = await get_capabilities(config)
    chosen = plan(config, caps)
    loop = asyncio.get_running_loop()
    stream_codec = config.codec == "hevc" and not config.intra and source.kind == "video"
    edge = await loop.run_in_executor(None, EdgeSide, config, chosen.ladder, stream_codec)
    if edge.base.ranking.id not in chosen.model.ranking_ids:
        accepted = ", ".join(chosen.model.ranking_ids)
        raise ServerError(f"{config.server} does not accept ranking {edge.base.ranking.id} (it accepts {accepted}); "
                          "pass the server's with --ranking")  # fmt: skip
    log.info("streaming %s to %s: %s, %s", config.source, config.server, config.codec,
             f"target {config.target_kbps:g} kbps over {len(chosen.ladder)} rungs" if config.target_kbps else
             chosen.ladder[0])  # fmt: skip
    streamer = FrameStreamer(config, source, edge, chosen, keep_images=config.annotate is not None)
    sinks = Sinks(config, source, progress)
    with ThreadPoolExecutor(1, thread_name_prefix="baf-out") as out_pool:
        start = time.perf_counter()
        try:
            async for outcome in streamer.outcomes():
                await loop.run_in_executor(out_pool, sinks.write, outcome)
        finally:
            sinks.summary.seconds = time.perf_counter() - start
            sinks.summary.reconnects = streamer.reconnects
            await loop.run_in_executor(out_pool, sinks.close)
    return sinks.summary


def stream(config: ClientConfig, *, progress: TextIO = sys.stderr) -> Summary:
    """Blocking form of `stream_async`."""
    return asyncio.run(stream_async(config, progress=progress))

