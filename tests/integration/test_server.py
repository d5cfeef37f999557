"""A real server process (`python -m server`) on a free loopback port, driven through the generated stubs."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from baf.cloud import CloudPipeline
from baf.models.zoo import load_split
from baf.predictor import load_predictor, packaged_checkpoint
from baf.ranking import find_ranking, packaged_rankings
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from tests.integration.server_util import ServerProcess, encode_frames, reencode_with_channels

pytestmark = pytest.mark.slow

E = pb.FrameErrorCode
CHECKPOINTS = Path(__file__).resolve().parents[2] / "baf" / "checkpoints"


@pytest.fixture(scope="module")
def frames(shared_data: Path) -> list[bytes]:
    return encode_frames(shared_data / "coco-val164" / "images", 3)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    process = ServerProcess(tmp_path_factory.mktemp("server"), "--max-batch", "4")
    yield process
    assert process.stop() == 0, process.log.read_text()


@pytest.fixture(scope="module")
def stub(server: ServerProcess):
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.DetectionServiceStub(channel)


def metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_stream_answers_every_frame_once_in_order_and_survives_bad_frames(stub, frames, server):
    before = metrics(server)
    unserved = reencode_with_channels(frames[0], 4)
    bitstreams = [frames[0], b"BAFS not a bitstream", frames[1], unserved, frames[2][:-10], frames[2]]
    requests = [pb.StreamRequest(sequence=10 * (i + 1), bitstream=b) for i, b in enumerate(bitstreams)]
    responses = list(stub.Stream(iter(requests), timeout=120))

    assert [r.sequence for r in responses] == [r.sequence for r in requests]
    outcomes = [r.WhichOneof("outcome") for r in responses]
    assert outcomes == ["result", "error", "result", "error", "error", "result"]
    assert responses[1].error.code == E.FRAME_ERROR_CODE_MALFORMED_BITSTREAM
    assert responses[3].error.code == E.FRAME_ERROR_CODE_UNSUPPORTED and "C=4" in responses[3].error.message
    assert responses[4].error.code == E.FRAME_ERROR_CODE_MALFORMED_BITSTREAM
    first = responses[0].result
    assert first.bytes_received == len(frames[0]) and len(first.detections) > 0
    d = first.detections[0]
    assert 0 < d.score <= 1 and d.box.x2 > d.box.x1 and d.box.y2 > d.box.y1 and d.class_name and d.category_id
    t = first.timings
    assert t.decode_ms > 0 and t.predict_ms > 0 and t.backend_ms > 0 and t.total_ms >= t.backend_ms
    assert t.batch_size >= 1

    after = metrics(server)
    moved = {k: after[k] - before.get(k, 0.0) for k in after}
    assert moved[("baf_frames_total", (("status", "ok"),))] == 3
    assert moved[("baf_frames_total", (("status", "malformed_bitstream"),))] == 2
    assert moved[("baf_frames_total", (("status", "unsupported"),))] == 1
    for stage in ("decode", "dequantize", "predict", "backend", "nms"):
        assert moved[("baf_stage_seconds_count", (("stage", stage),))] > 0, stage
    assert moved[("baf_frame_bytes_count", ())] == len(requests)
    assert moved[("baf_grpc_requests_total", (("code", "OK"), ("method", "/baf.v1.DetectionService/Stream")))] == 1
    assert after[("baf_active_streams", ())] == 0


def test_out_of_order_sequence_is_an_in_band_error(stub, frames):
    requests = [pb.StreamRequest(sequence=5, bitstream=b"x"), pb.StreamRequest(sequence=5, bitstream=frames[0])]
    responses = list(stub.Stream(iter(requests), timeout=60))
    assert [r.error.code for r in responses] == [E.FRAME_ERROR_CODE_MALFORMED_BITSTREAM, E.FRAME_ERROR_CODE_OUT_OF_ORDER]


def test_detect_frame(stub, frames):
    result = stub.DetectFrame(pb.DetectFrameRequest(bitstream=frames[1]), timeout=60).result
    assert len(result.detections) > 0 and result.bytes_received == len(frames[1])
    with pytest.raises(grpc.RpcError) as bad:
        stub.DetectFrame(pb.DetectFrameRequest(bitstream=frames[1][:100]), timeout=60)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "payload" in bad.value.details() or "truncated" in bad.value.details()


def test_capabilities_list_what_the_checkpoints_serve(stub):
    caps = stub.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=30)
    (model,) = caps.models
    sidecars = [json.loads((CHECKPOINTS / name).with_suffix(".json").read_text())
                for name in model.checkpoint.split(", ")]  # fmt: skip
    assert (model.model, model.split_layer, model.channels_total) == ("yolov3-tiny", 8, 256)
    # By default every packaged ranking is served, the model's own first, each by its packaged checkpoint.
    assert list(model.ranking_ids) == [s["ranking_id"] for s in sidecars]
    assert list(model.ranking_ids) == [r.id for r in packaged_rankings("yolov3-tiny", 8)] and len(sidecars) == 2
    for sidecar in sidecars:
        assert list(model.channels) == sidecar["channels"] and list(model.bits) == sidecar["bits"]
    assert model.restoration == "baf-predictor" and len(model.class_names) == 80
    assert {"jxl", "png", "raw"} <= set(caps.codecs)
    assert caps.limits.max_batch == 4 and caps.limits.max_frame_bytes > 0


def test_frames_of_the_packaged_residual_pca_ranking_are_restored_by_its_checkpoint(stub, shared_data):
    images = shared_data / "coco-val164" / "images"
    [virtual] = encode_frames(images, 1, channels=32, bits=3, ranking=Path("residual-pca"))
    [ranked] = encode_frames(images, 1, channels=32, bits=3)
    answers = [stub.DetectFrame(pb.DetectFrameRequest(bitstream=b), timeout=60).result for b in (virtual, ranked)]
    assert all(len(a.detections) > 0 for a in answers)
    # The server restored the virtual frame with the residual-pca checkpoint: in process it finds the same boxes.
    split = load_split("yolov3-tiny")
    ranking = find_ranking("yolov3-tiny", 8, "residual-pca")
    predictor = load_predictor(packaged_checkpoint("yolov3-tiny", 8, ranking.id), ranking_id=ranking.id)
    pipeline = CloudPipeline(split, ranking, restorer=predictor)
    [expected] = pipeline.detect([pipeline.stream().decode(virtual)])
    found = answers[0].detections
    assert sorted(d.class_index for d in found) == sorted(expected.labels.tolist())
    assert sorted(round(d.score, 3) for d in found) == sorted(round(float(v), 3) for v in expected.scores)


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="baf.v1.DetectionService"), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=10)
        assert "baf.v1.DetectionService" in {s.name for s in reply.list_services_response.service}


def test_oversized_frame_is_refused(stub, frames):
    big = frames[0] + bytes(17 << 20)
    with pytest.raises(grpc.RpcError) as refused:
        stub.DetectFrame(pb.DetectFrameRequest(bitstream=big), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_is_honoured_and_the_server_goes_on(stub, frames):
    with pytest.raises(grpc.RpcError) as late:
        stub.DetectFrame(pb.DetectFrameRequest(bitstream=frames[0]), timeout=0.001)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert stub.DetectFrame(pb.DetectFrameRequest(bitstream=frames[0]), timeout=60).result.detections
