"""Which failed Stream calls the client reconnects after, and which it reports."""

import grpc
import pytest

from client.stream import stream_lost


def _error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "details", "lost"),
    [
        (grpc.StatusCode.UNAVAILABLE, "server is draining; reconnect to continue", True),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", True),
        # grpc aio's report of a write racing the server's end of the call (grpc/grpc#36066)
        (grpc.StatusCode.INTERNAL, "Internal error from Core", True),
        (grpc.StatusCode.INTERNAL, "decoder failed: corrupt frame", False),
        (grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "this client already has 2 streams open", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "Internal error from Core", False),
    ],
)
def test_stream_lost_reconnects_only_after_a_lost_server(code, details, lost):
    assert stream_lost(_error(code, details)) is lost
