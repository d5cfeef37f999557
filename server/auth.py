"""Bearer-token authentication: a call without `authorization: Bearer <token>` ends UNAUTHENTICATED.

The check runs before the servicer sees the call. Health checks stay open so that load balancers and
orchestrators can probe the server without the secret. The token is never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

import grpc

from server.metrics import Behavior, around, rewrap

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata on every call but health checks."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
        for key, value in metadata or ():
            if key.lower() == "authorization":
                given = value if isinstance(value, bytes) else value.encode()
                return hmac.compare_digest(given, self._expected)  # constant time: no timing oracle
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(OPEN_PREFIXES) or self._allowed(details.invocation_metadata):
            return handler
        log.info("refused call method=%s reason=missing-or-wrong-token", details.method)

        async def deny(context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token "
                                "(send metadata `authorization: Bearer <token>`)")

        def wrap(fn: Behavior) -> Behavior:
            return around(fn, deny, None)

        return rewrap(handler, wrap)
