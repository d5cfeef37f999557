"""Micro-batching of decoded frames across streams, with one thread owning the model.

Frames wait in one bounded queue. The batcher takes up to `max_batch` of them, waiting at most
`max_batch_delay` after the oldest arrived for others to join, and runs `CloudPipeline.detect` on its
single executor thread (frames of one C, n and size run as one tensor batch). While a batch runs, new
frames queue up, so the next batch is fuller under load. A full queue either rejects the new frame or
drops the oldest waiting one (`overflow`); both are counted. Frames whose caller went away or whose
deadline passed are skipped before they reach the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from baf.cloud import CloudPipeline, DecodedFrame
from baf.errors import BafError, FrameDeadlineError, OverloadedError
from server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameOutcome:
    """One frame's detections (on the CPU, source pixels) and where its time went, in seconds."""

    boxes: list[list[float]]
    scores: list[float]
    labels: list[int]
    stages: dict[str, float]  # pipeline stages of the batch it ran in
    queued: float  # arrival at the batcher until its batch started
    batch_size: int


_Found = tuple[dict[str, float], list[list[float]], list[float], list[int]]  # stages, boxes, scores, labels


@dataclass
class _Item:
    frame: DecodedFrame
    future: asyncio.Future[FrameOutcome]
    arrived: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic() value


class Batcher:
    """Runs frames through one `CloudPipeline` in batches; `submit` from the event loop, `await` the future."""

    def __init__(
        self,
        pipeline: CloudPipeline,
        metrics: Metrics,
        *,
        max_batch: int,
        max_batch_delay_s: float,
        max_queue: int,
        overflow: str,
        autocast: bool = False,
    ) -> None:
        self.pipeline, self.metrics = pipeline, metrics
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_batch_delay_s, max_queue
        self.drop_oldest = overflow == "drop-oldest"
        self.autocast = autocast
        self._queue: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baf-model")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start taking batches (call from the server's event loop)."""
        self._task = asyncio.create_task(self._run(), name="baf-batcher")

    def submit(self, frame: DecodedFrame, deadline: float | None = None) -> asyncio.Future[FrameOutcome]:
        """Queue a frame; the future gets its outcome, or OverloadedError / FrameDeadlineError / a BafError.

        Raises OverloadedError at once when the queue is full under the reject policy, and when closing.
        """
        if self._closing:
            raise OverloadedError("server is shutting down")
        if len(self._queue) >= self.max_queue:
            if not self.drop_oldest:
                self.metrics.dropped.labels("queue_full").inc()
                raise OverloadedError(f"server queue full ({self.max_queue} frames waiting); frame dropped")
            oldest = self._queue.popleft()
            self.metrics.dropped.labels("drop_oldest").inc()
            if not oldest.future.done():
                oldest.future.set_exception(
                    OverloadedError(f"server queue full ({self.max_queue} frames waiting); oldest frame dropped"))
        future: asyncio.Future[FrameOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(frame, future, deadline=deadline))
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Finish every queued frame, then stop the model thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _next_batch(self) -> list[_Item]:
        """Wait for a first frame, then up to max_delay after its arrival for the batch to fill."""
        while not self._queue:
            if self._closing:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        while len(self._queue) < self.max_batch and not self._closing:
            remaining = self._queue[0].arrived + self.max_delay - time.perf_counter()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            if not self._queue:  # the waiting frames were dropped meanwhile
                return []
        batch: list[_Item] = []
        now = time.monotonic()
        while self._queue and len(batch) < self.max_batch:
            item = self._queue.popleft()
            if item.future.done():  # cancelled by its caller, or dropped
                self.metrics.dropped.labels("cancelled").inc()
            elif item.deadline is not None and now >= item.deadline:
                self.metrics.dropped.labels("deadline").inc()
                item.future.set_exception(FrameDeadlineError("deadline passed while the frame waited for the model"))
            else:
                batch.append(item)
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not (self._closing and not self._queue):
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(self._executor, self._work, [i.frame for i in batch])
            except Exception as e:  # the model thread must never take the batcher down with it
                log.exception("batch failed frames=%d", len(batch))
                outcomes = [e] * len(batch)
            for item, outcome in zip(batch, outcomes, strict=True):
                if item.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    stages, boxes, scores, labels = outcome
                    item.future.set_result(
                        FrameOutcome(boxes, scores, labels, stages, started - item.arrived, len(batch)))

    def _work(self, frames: list[DecodedFrame]) -> list[_Found | BaseException]:
        """On the model thread: the whole batch, or frame by frame when the batch fails (one bad frame
        must not fail the others). A batch the device has no memory for runs again in halves; a single
        frame that still does not fit fails alone."""
        try:
            return self._detect(frames)
        except BafError as e:
            if len(frames) == 1:
                return [e]
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            _release_cached_memory(self.pipeline.split.conv.weight.device)
            if len(frames) == 1:
                log.error("out of device memory on a single frame")
                return [e]
            half = len(frames) // 2
            log.warning("out of device memory batch=%d; running it in halves of %d and %d",
                        len(frames), half, len(frames) - half)
            return self._work(frames[:half]) + self._work(frames[half:])
        results: list[_Found | BaseException] = []
        for frame in frames:
            results.extend(self._work([frame]))
        return results

    def _detect(self, frames: list[DecodedFrame]) -> list[_Found]:
        stages: dict[str, float] = {}

        def timer(stage: str, seconds: float) -> None:
            stages[stage] = stages.get(stage, 0.0) + seconds
            self.metrics.observe_stage(stage, seconds)

        device = self.pipeline.split.conv.weight.device
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.autocast):
            found = self.pipeline.detect(frames, timer)
        self.metrics.batch_size.observe(len(frames))
        # Plain lists, made here: the event loop should not wait on tensor copies.
        return [(stages, d.boxes.float().tolist(), d.scores.float().tolist(), d.labels.tolist()) for d in found]


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is the device running out of memory (torch raises OutOfMemoryError on CUDA, a plain
    RuntimeError saying so on other backends)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def _release_cached_memory(device: torch.device) -> None:
    """Hand the allocator's cached blocks back before a retry, so the smaller batches can use them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
