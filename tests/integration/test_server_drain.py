"""SIGTERM drains a real server process: health NOT_SERVING, frames in flight answered, exit code 0."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from tests.integration.server_util import ServerProcess, encode_frames

pytestmark = pytest.mark.slow


def test_sigterm_drains(shared_data: Path, tmp_path: Path):
    frames = encode_frames(shared_data / "coco-val164" / "images", 4)
    # One frame per batch, so that the later frames are still queued when the signal comes.
    server = ServerProcess(tmp_path, "--max-batch", "1", "--drain-seconds", "30")
    release = threading.Event()
    try:
        with grpc.insecure_channel(server.target) as channel:
            statuses: list[int] = []

            def watch() -> None:
                request = health_pb2.HealthCheckRequest(service="baf.v1.DetectionService")
                try:
                    for reply in health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60):
                        statuses.append(reply.status)
                except grpc.RpcError:
                    pass  # the server went away

            watcher = threading.Thread(target=watch)
            watcher.start()

            def requests():
                yield from (pb.StreamRequest(sequence=i, bitstream=f) for i, f in enumerate(frames))
                release.wait(60)  # keep the stream open: the server, not the client, ends it

            call = pb_grpc.DetectionServiceStub(channel).Stream(requests(), timeout=120)
            answers = [next(call)]
            server.terminate()
            with pytest.raises(grpc.RpcError) as ended:
                answers.extend(call)
            release.set()
            watcher.join(30)

        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
        assert [a.sequence for a in answers] == [0, 1, 2, 3]
        assert all(a.WhichOneof("outcome") == "result" for a in answers)
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert statuses[0] == serving and not_serving in statuses
        assert server.stop(timeout=60) == 0, server.log.read_text()
    finally:
        release.set()
        server.stop(timeout=5)
