"""A full queue answers DROPPED in-band (reject or drop-oldest) and counts it; the stream goes on."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from server.config import ServerConfig
from server.testing import background
from tests.integration.server_util import encode_frames

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("policy, reason", [("reject", "queue_full"), ("drop-oldest", "drop_oldest")])
def test_overflow(shared_data: Path, policy: str, reason: str):
    (frame,) = encode_frames(shared_data / "coco-val164" / "images", 1)
    config = ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", max_batch=1, max_queue=1,
                          max_batch_delay_ms=0, stream_window=8, overflow=policy)
    with background(config) as server, grpc.insecure_channel(server.target) as channel:
        requests = [pb.StreamRequest(sequence=i, bitstream=frame) for i in range(8)]
        responses = list(pb_grpc.DetectionServiceStub(channel).Stream(iter(requests), timeout=120))
        assert [r.sequence for r in responses] == list(range(8))
        dropped = [r.sequence for r in responses if r.error.code == pb.FRAME_ERROR_CODE_DROPPED]
        assert dropped and len(dropped) < 8
        assert responses[0].WhichOneof("outcome") == "result"
        assert server.registry.get_sample_value("baf_dropped_frames_total", {"reason": reason}) == len(dropped)
        assert server.registry.get_sample_value("baf_frames_total", {"status": "dropped"}) == len(dropped)
