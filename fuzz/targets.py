"""What each fuzz target runs on one input, and what counts as a finding.

`bitstream`: `baf.bitstream.parse`, then the payload decode of the header's codec. Allowed outcomes: a
decoded q of the header's shape, `BitstreamError`, `CodecError`. Anything else is a crash.

`server`: a real server (`server.testing.background`, real model, loopback) gets the input as a
`DetectFrame` call and, with the inputs before it, as one frame of a `Stream` call. Allowed outcomes:
a result; an in-band `FrameError` with a code other than INTERNAL and a message; a call refused with
INVALID_ARGUMENT or RESOURCE_EXHAUSTED and a message. INTERNAL, any other status, a missing, extra
or reordered answer, or a call that outlives its deadline (a hang) is a finding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import grpc

from baf import bitstream
from baf.errors import BitstreamError, CodecError
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 60.0
REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Finding(AssertionError):
    """An input the code under test handled wrongly: crashed, hung, or answered without a precise status."""


def check_bitstream(data: bytes) -> str:
    """Parse and decode one input; the outcome's name ("decoded", "BitstreamError", ...) or a Finding."""
    try:
        frame = bitstream.parse(data)
        q = bitstream.decode_frame(frame)
    except (BitstreamError, CodecError) as e:
        if not str(e):
            raise Finding(f"{type(e).__name__} without a message") from e
        return type(e).__name__
    except Exception as e:
        raise Finding(f"parse/decode raised {type(e).__name__}: {e}") from e
    h = frame.header
    if q.shape != (h.channels, h.height, h.width) or int(q.max(initial=0)) >= 1 << h.bits:
        raise Finding(f"decoded q {q.shape} max {q.max()} does not fit the header (C={h.channels} n={h.bits})")
    return "decoded"


def _status(e: grpc.RpcError) -> str:
    if e.code() not in REFUSED or not e.details():
        raise Finding(f"call ended {e.code().name}: {e.details()!r}") from None
    return e.code().name


def check_detect_frame(stub: pb_grpc.DetectionServiceStub, data: bytes) -> str:
    """One DetectFrame call; "result" or the refusal's status name, else a Finding."""
    try:
        stub.DetectFrame(pb.DetectFrameRequest(bitstream=data), timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as e:
        return _status(e)
    return "result"


def check_stream(stub: pb_grpc.DetectionServiceStub, inputs: Sequence[bytes],
                 sequences: Sequence[int] | None = None) -> list[str]:  # fmt: skip
    """One Stream call with `inputs` (under `sequences`, default 0..n-1); each answer's outcome, else a Finding."""
    sequences = list(range(len(inputs))) if sequences is None else list(sequences)
    requests = [pb.StreamRequest(sequence=s, bitstream=d) for s, d in zip(sequences, inputs, strict=True)]
    try:
        answers = list(stub.Stream(iter(requests), timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as e:
        return [_status(e)]
    if [a.sequence for a in answers] != sequences:
        raise Finding(f"answers for sequences {[a.sequence for a in answers]}, sent {sequences}")
    outcomes = []
    for a in answers:
        if a.WhichOneof("outcome") == "result":
            outcomes.append("result")
        elif a.WhichOneof("outcome") != "error" or a.error.code in (
                pb.FRAME_ERROR_CODE_INTERNAL, pb.FRAME_ERROR_CODE_UNSPECIFIED) or not a.error.message:
            raise Finding(f"sequence {a.sequence}: no precise answer ({a.error.code}, {a.error.message!r})")
        else:
            outcomes.append(pb.FrameErrorCode.Name(a.error.code).removeprefix("FRAME_ERROR_CODE_"))
    return outcomes


@contextlib.contextmanager
def server_stub() -> Iterator[pb_grpc.DetectionServiceStub]:
    """A real server in this process (CPU, packaged model and checkpoint) and a stub talking to it."""
    from server.config import ServerConfig
    from server.testing import background

    config = ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", max_frame_bytes=1 << 20)
    with background(config) as handle, grpc.insecure_channel(handle.target) as channel:
        yield pb_grpc.DetectionServiceStub(channel)
