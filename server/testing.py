"""A real server in the background of a test or benchmark: its own event loop in its own thread.

    with background(ServerConfig(listen="127.0.0.1:0", metrics_port=0, device="cpu")) as handle:
        channel = grpc.insecure_channel(handle.target)   # handle.port, handle.metrics_port

The server binds a real socket (port 0 picks a free one), loads the real model, and drains when the
block ends (in-flight calls get `drain_s` seconds). Start-up errors (ConfigError, a missing checkpoint)
are raised from `background` itself, and nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from server.app import RunningServer, start
from server.config import ServerConfig

START_TIMEOUT_S = 300.0  # loading a model on a busy CI machine can be slow


@dataclass(frozen=True)
class ServerHandle:
    """A running background server: where to reach it, and its metrics registry (to read values directly)."""

    port: int
    metrics_port: int | None
    registry: CollectorRegistry
    config: ServerConfig
    _running: RunningServer
    _loop: asyncio.AbstractEventLoop

    @property
    def target(self) -> str:
        """`host:port` for grpc channels (the loopback address for wildcard listens)."""
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{'127.0.0.1' if host in ('[::]', '0.0.0.0') else host}:{self.port}"

    def drain(self, grace: float | None = None, timeout: float = 120.0) -> None:
        """Drain now, as SIGTERM would (NOT_SERVING, in-flight frames finish); idempotent with the exit drain."""
        asyncio.run_coroutine_threadsafe(self._running.drain(grace), self._loop).result(timeout)


@contextlib.contextmanager
def background(config: ServerConfig, *, drain_s: float = 1.0) -> Iterator[ServerHandle]:
    """Run a server for `config` until the block ends; yields its `ServerHandle`."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="baf-server-loop", daemon=True)
    thread.start()
    registry = CollectorRegistry()
    try:
        running = asyncio.run_coroutine_threadsafe(start(config, registry), loop).result(START_TIMEOUT_S)
        handle = ServerHandle(running.port, running.metrics_port, registry, config, running, loop)
        try:
            yield handle
        finally:
            handle.drain(drain_s)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
