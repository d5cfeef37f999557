"""Prometheus metrics of the server, on an explicit registry, and the gRPC interceptor that counts calls.

Names (DESIGN.md): baf_frames_total{status}, baf_frame_bytes, baf_stage_seconds{stage},
baf_request_latency_seconds, baf_active_streams, baf_queue_depth, baf_dropped_frames_total{reason},
baf_batch_size, baf_refused_calls_total{limit}, and per gRPC method and status code baf_grpc_requests_total /
baf_grpc_handling_seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

STAGES = ("decode", "dequantize", "predict", "backend", "nms")
# baf_refused_calls_total{limit}: a fixed set, never a client's identity (unbounded, and personal data)
LIMITS = ("streams_per_client",)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BYTES = tuple(float(1 << k) for k in range(8, 27, 2))  # 256 B .. 64 MiB


class Metrics:
    """Every metric the server exports, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, max_batch: int = 64) -> None:
        self.registry = registry
        self.frames = Counter("baf_frames", "Frames answered, by outcome (ok or the FrameErrorCode in lower case)",
                              ["status"], registry=registry)
        self.frame_bytes = Histogram("baf_frame_bytes", "Size of received frame bitstreams, bytes",
                                     buckets=_BYTES, registry=registry)
        self.stage_seconds = Histogram("baf_stage_seconds", "Time per pipeline stage; batch stages once per batch",
                                       ["stage"], buckets=_SECONDS, registry=registry)
        self.request_latency = Histogram("baf_request_latency_seconds", "Per frame: arrival until its answer is ready",
                                         ["method"], buckets=_SECONDS, registry=registry)
        self.active_streams = Gauge("baf_active_streams", "Open Stream calls", registry=registry)
        self.queue_depth = Gauge("baf_queue_depth", "Frames waiting for the model", registry=registry)
        self.dropped = Counter("baf_dropped_frames", "Frames dropped unprocessed, by reason", ["reason"],
                               registry=registry)
        self.batch_size = Histogram("baf_batch_size", "Frames per model batch",
                                    buckets=tuple(float(b) for b in _batch_buckets(max_batch)), registry=registry)
        self.refused_calls = Counter("baf_refused_calls", "Calls refused by a per-client limit, by limit",
                                     ["limit"], registry=registry)
        self.grpc_requests = Counter("baf_grpc_requests", "gRPC calls finished, by method and status code",
                                     ["method", "code"], registry=registry)
        self.grpc_seconds = Histogram("baf_grpc_handling_seconds", "gRPC call duration, by method", ["method"],
                                      buckets=_SECONDS + (30.0, 60.0, 300.0), registry=registry)
        for stage in STAGES:  # export every stage from the start, so dashboards see zeros, not gaps
            self.stage_seconds.labels(stage)
        for limit in LIMITS:
            self.refused_calls.labels(limit)

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Record one stage's time (a `baf.cloud.StageTimer`)."""
        self.stage_seconds.labels(stage).observe(seconds)


def _batch_buckets(max_batch: int) -> list[int]:
    buckets, b = [], 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    return buckets + [max_batch]


Behavior = Callable[..., Any]
Before = Callable[[grpc.aio.ServicerContext], Awaitable[None]]
After = Callable[[grpc.aio.ServicerContext, BaseException | None], None]


def rewrap(handler: grpc.RpcMethodHandler | None, wrap: Callable[[Behavior], Behavior]) -> grpc.RpcMethodHandler | None:
    """A handler of the same arity (and serializers) whose behavior is `wrap(behavior)`."""
    if handler is None:
        return None
    for attr, make in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behavior = getattr(handler, attr)
        if behavior is not None:
            return make(wrap(behavior), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


def around(fn: Behavior, before: Before | None, after: After | None) -> Behavior:
    """`fn` with `before(context)` awaited first and `after(context, error)` called when it ends.

    Handles both shapes grpc.aio behaviors come in: async generators (responses yielded) and coroutines
    (a unary response returned, or streamed responses written with `context.write`).
    """
    if inspect.isasyncgenfunction(fn):
        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                if before is not None:
                    await before(context)
                async for response in fn(request, context):
                    yield response
            except BaseException as e:
                error = e
                raise
            finally:
                if after is not None:
                    after(context, error)

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        error: BaseException | None = None
        try:
            if before is not None:
                await before(context)
            return await fn(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            if after is not None:
                after(context, error)

    return coroutine


def status_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status code a call ended with, as its name (OK, CANCELLED, ...)."""
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    return "UNKNOWN" if error is not None else "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and final status code, and times it."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method

        def wrap(fn: Behavior) -> Behavior:
            start = 0.0

            async def before(context: grpc.aio.ServicerContext) -> None:
                nonlocal start
                start = time.perf_counter()

            def after(context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
                self._m.grpc_requests.labels(method, status_name(context, error)).inc()
                self._m.grpc_seconds.labels(method).observe(time.perf_counter() - start)

            return around(fn, before, after)

        return rewrap(handler, wrap)
