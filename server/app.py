"""Assembling and running the server: load the pipeline once, serve gRPC and /metrics, drain on a signal.

One process owns the device. Start-up: model, ranking and restorer are loaded (and checked), the batcher
starts its model thread, the gRPC server binds (the bound port goes to --port-file), and health turns
SERVING. On SIGTERM/SIGINT: health NOT_SERVING first, streams stop taking frames and finish the ones in
flight, `server.stop(grace=drain_seconds)`, then the batcher and the thread pools stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from baf import codecs
from baf.cloud import CloudPipeline, DetectSettings
from baf.errors import BafError, CheckpointError, CodecUnavailableError, ConfigError
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from server.auth import AuthInterceptor
from server.batching import Batcher
from server.config import ServerConfig
from server.metrics import Metrics, MetricsInterceptor
from server.servicer import SERVICE_NAME, DetectionServicer, Served

log = logging.getLogger(__name__)

# gRPC's own framing around the bitstream bytes; the transport refuses bigger messages before reading them.
_MESSAGE_OVERHEAD = 1024
# After our own calls have finished draining: how long other calls (health watches, reflection) may take.
_STOP_GRACE_S = 1.0


def resolve_device(name: str) -> Any:
    """The torch device for --device (auto: CUDA when present, else CPU)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device / BAF_DEVICE: {name} requested but CUDA is not available")
    return torch.device(name)


def load_pipeline(cfg: ServerConfig) -> tuple[CloudPipeline, Served]:
    """The model side on its device, with the configured restorer, and what it serves."""
    from baf.predictor import load_predictor, packaged_checkpoint

    device = resolve_device(cfg.device)
    settings = DetectSettings(conf_threshold=cfg.conf_threshold, iou_threshold=cfg.iou_threshold)
    pipeline = CloudPipeline.load(cfg.model, cfg.layer, cfg.weights, cfg.ranking, settings=settings)
    split, ranking = pipeline.split, pipeline.ranking
    served = Served(restoration="zeros", codecs=tuple(available_codecs()))
    if cfg.restoration == "predictor":
        try:
            path = cfg.predictor or packaged_checkpoint(split.model.name, split.layer, ranking.id)
        except CheckpointError as e:
            raise ConfigError(f"{e}; pass --predictor PATH (BAF_PREDICTOR) or --restoration zeros") from None
        predictor = load_predictor(path, model=split.model.name, layer=split.layer, ranking_id=ranking.id,
                                   map_location=device)
        # All defaults: every other packaged ranking is served too, by its packaged checkpoint.
        also = packaged_also(split, predictor, device) if cfg.ranking is None and cfg.predictor is None else []
        pipeline = CloudPipeline(split, ranking, restorer=predictor, settings=settings,
                                 also=[(r, p) for r, p, _ in also])  # fmt: skip
        names = [p.with_suffix(".safetensors").name for p in [Path(path), *(p for _, _, p in also)]]
        served = Served(predictor.config.channels, predictor.config.bits, "baf-predictor", ", ".join(names),
                        served.codecs)  # fmt: skip
    split.model.to(device)
    return pipeline, served


def packaged_also(split: Any, main: Any, device: Any) -> list[tuple[Any, Any, Path]]:
    """(ranking, predictor, checkpoint path) of every packaged ranking besides the default that has a packaged
    checkpoint serving the same C and n as `main` (what the capabilities announce); others are skipped with a
    warning."""
    from baf.predictor import load_predictor, packaged_checkpoint
    from baf.ranking import packaged_rankings

    also = []
    for ranking in packaged_rankings(split.model.name, split.layer)[1:]:
        try:
            path = packaged_checkpoint(split.model.name, split.layer, ranking.id)
            predictor = load_predictor(path, model=split.model.name, layer=split.layer, ranking_id=ranking.id,
                                       map_location=device)
        except CheckpointError as e:
            log.warning("packaged ranking not served ranking=%s reason=%s", ranking.id, e)
            continue
        if (predictor.config.channels, predictor.config.bits) != (main.config.channels, main.config.bits):
            log.warning("packaged ranking not served ranking=%s reason=its checkpoint serves other C or n",
                        ranking.id)  # fmt: skip
            continue
        also.append((ranking, predictor, path))
    return also


def available_codecs() -> list[str]:
    """Registered codecs whose external dependencies are present here (hevc needs ffmpeg with libx265)."""
    from baf.codecs import hevc

    names = []
    for name in codecs.names():
        try:
            if name == "hevc":
                hevc.ffmpeg_binary()
            codecs.create(name, bits=8)
        except (CodecUnavailableError, BafError) as e:
            log.warning("codec unavailable codec=%s reason=%s", name, e)
            continue
        names.append(name)
    return names


@dataclass
class RunningServer:
    """A started server: its bound ports and what `drain` must stop."""

    config: ServerConfig
    port: int
    metrics_port: int | None
    server: grpc.aio.Server
    health: Any
    servicer: DetectionServicer
    batcher: Batcher
    decode_pool: ThreadPoolExecutor
    metrics_http: Any
    stopped: bool = False

    async def drain(self, grace: float | None = None) -> None:
        """NOT_SERVING, stop taking frames, let in-flight calls finish within `grace` seconds, stop everything."""
        if self.stopped:
            return
        self.stopped = True
        grace = self.config.drain_seconds if grace is None else grace
        log.info("draining grace_s=%g", grace)
        await self.health.enter_graceful_shutdown()
        self.servicer.draining.set()
        start = time.monotonic()
        try:
            # Our calls end by themselves once their frames are answered; others (health Watch) would hold
            # server.stop for the whole grace period.
            await asyncio.wait_for(self.servicer.wait_idle(), grace)
        except asyncio.TimeoutError:  # TimeoutError itself only from 3.11
            log.warning("drain timed out grace_s=%g; cancelling the calls still running", grace)
        await self.server.stop(max(0.0, min(_STOP_GRACE_S, grace - (time.monotonic() - start))))
        await self.batcher.close()
        self.decode_pool.shutdown(wait=True)
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        log.info("stopped")


async def start(cfg: ServerConfig, registry: CollectorRegistry | None = None) -> RunningServer:
    """Load everything, bind, and serve; returns once the server is SERVING (port file written)."""
    token = cfg.bearer_token()
    if cfg.tls:
        cfg.tls_files()  # unreadable files fail before the model loads
    pipeline, served = load_pipeline(cfg)
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry, cfg.max_batch)
    batcher = Batcher(pipeline, metrics, max_batch=cfg.max_batch, max_batch_delay_s=cfg.max_batch_delay_ms / 1e3,
                      max_queue=cfg.max_queue, overflow=cfg.overflow,
                      autocast=pipeline.split.conv.weight.device.type == "cuda")
    decode_pool = ThreadPoolExecutor(max_workers=cfg.decode_threads, thread_name_prefix="baf-decode")
    servicer = DetectionServicer(pipeline, batcher, metrics, decode_pool, served, max_frame_bytes=cfg.max_frame_bytes,
                                 stream_window=cfg.stream_window, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                 max_streams_per_client=cfg.max_streams_per_client)
    interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics)]
    if token is not None:
        interceptors.append(AuthInterceptor(token))
    limit = cfg.max_frame_bytes + _MESSAGE_OVERHEAD
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),  # a port clash fails loudly instead of sharing the port
    ])  # fmt: skip
    pb_grpc.add_DetectionServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    try:
        return await _bind_and_start(cfg, server, health_servicer, servicer, batcher, decode_pool, registry, served,
                                     token is not None)
    except BaseException:
        await server.stop(None)
        await batcher.close()
        decode_pool.shutdown(wait=False)
        raise


async def _bind_and_start(cfg: ServerConfig, server: grpc.aio.Server, health_servicer: Any,
                          servicer: DetectionServicer, batcher: Batcher, decode_pool: ThreadPoolExecutor,
                          registry: CollectorRegistry, served: Served, auth: bool) -> RunningServer:
    tls = cfg.tls_files() if cfg.tls else None
    try:
        if tls is not None:
            cert, key, client_ca = tls
            credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                                      require_client_auth=client_ca is not None)
            port = server.add_secure_port(cfg.address, credentials)
        else:
            port = server.add_insecure_port(cfg.address)
    except RuntimeError as e:
        raise ConfigError(f"--listen / BAF_LISTEN: cannot bind {cfg.address} ({e})") from None
    metrics_http, metrics_port = None, None
    if cfg.metrics_port is not None:
        try:
            metrics_http, _ = start_http_server(cfg.metrics_port, cfg.metrics_host, registry=registry)
        except OSError as e:
            raise ConfigError(f"--metrics-port / BAF_METRICS_PORT: cannot bind {cfg.metrics_port} ({e})") from None
        metrics_port = metrics_http.server_port
    try:
        await batcher.start()
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.port_file is not None:
            tmp = cfg.port_file.with_name(cfg.port_file.name + ".tmp")
            tmp.write_text(f"{port}\n")
            os.replace(tmp, cfg.port_file)  # readers never see a half-written file
    except BaseException:
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        raise
    log.info(
        "serving address=%s port=%d tls=%s mtls=%s auth=%s metrics_port=%s device=%s restoration=%s checkpoint=%s "
        "max_batch=%d max_queue=%d overflow=%s", cfg.address, port, tls is not None, cfg.tls_client_ca is not None,
        "token" if auth else "off", metrics_port, servicer.device, served.restoration,
        served.checkpoint or "-", cfg.max_batch, cfg.max_queue, cfg.overflow,
    )  # fmt: skip
    return RunningServer(cfg, port, metrics_port, server, health_servicer, servicer, batcher, decode_pool, metrics_http)


async def _first_signal(*signals: signal.Signals) -> signal.Signals:
    """Wait for the first of `signals`; later ones are ignored while we drain."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()
    for sig in signals:
        loop.add_signal_handler(sig, lambda s=sig: received.done() or received.set_result(s))
    return await received


async def serve(cfg: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    running = await start(cfg)
    sig = await _first_signal(signal.SIGTERM, signal.SIGINT)
    log.info("signal=%s", sig.name)
    await running.drain()
