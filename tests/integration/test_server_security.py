"""Security on real servers (server.testing.background: real sockets on 127.0.0.1:0): bearer token, TLS and mTLS
with certificates made here, per-client limits on streams and message size, no secret in logs or metric labels,
and model files loaded without pickle and refused when tampered with."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import pickle
import shutil
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from baf.errors import CheckpointError, RankingError, WeightsError
from baf.models.zoo import find_weights, get_spec
from baf.packaged import packaged_ranking_path
from baf.predictor import load_predictor
from baf.ranking import read_ranking
from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from server.app import load_pipeline
from server.config import ServerConfig
from server.metrics import LIMITS, STAGES
from server.servicer import SERVICE_NAME, status_label
from server.testing import background
from tests.conftest import SHIPPED_CHECKPOINT
from tests.integration.server_util import REPO, encode_frames

pytestmark = pytest.mark.slow

TOKEN = "test-token-5b8f"


def _config(**overrides) -> ServerConfig:
    return ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", **overrides)


def _capabilities(channel: grpc.Channel, metadata=None) -> pb.GetCapabilitiesResponse:
    return pb_grpc.DetectionServiceStub(channel).GetCapabilities(pb.GetCapabilitiesRequest(), metadata=metadata,
                                                                 timeout=10)


def test_token_required(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with background(_config(token_file=token_file)) as server, grpc.insecure_channel(server.target) as channel:
        for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]):
            with pytest.raises(grpc.RpcError) as refused:
                _capabilities(channel, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            list(pb_grpc.DetectionServiceStub(channel).Stream(iter([pb.StreamRequest(sequence=1)]), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _capabilities(channel, [("authorization", f"Bearer {TOKEN}")]).models
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        counted = server.registry.get_sample_value(
            "baf_grpc_requests_total",
            {"method": "/baf.v1.DetectionService/GetCapabilities", "code": "UNAUTHENTICATED"})
        assert counted == 3
    assert TOKEN not in caplog.text


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key, issuer_name: str, issuer_key, *, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    """A test CA, a server certificate for localhost / 127.0.0.1 and a client certificate, all from that CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("baf test CA", ca_key, "baf test CA", ca_key, ca=True)
    files = {"ca.pem": _pem(ca), "server.pem": _pem(_cert("localhost", server_key, "baf test CA", ca_key)),
             "server.key": _key_pem(server_key)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {
        "ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key", "ca_pem": files["ca.pem"],
        "client_pem": _pem(_cert("client", client_key, "baf test CA", ca_key)), "client_key": _key_pem(client_key),
    }  # fmt: skip


def test_tls(pki):
    with background(_config(tls_cert=pki["cert"], tls_key=pki["key"])) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca_pem"])
        with grpc.secure_channel(server.target, credentials) as channel:
            assert _capabilities(channel).models
        with grpc.insecure_channel(server.target) as plain, pytest.raises(grpc.RpcError) as refused:
            _capabilities(plain)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate(pki):
    with background(_config(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"])) as server:
        anonymous = grpc.ssl_channel_credentials(root_certificates=pki["ca_pem"])
        with grpc.secure_channel(server.target, anonymous) as channel, pytest.raises(grpc.RpcError) as refused:
            _capabilities(channel)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        known = grpc.ssl_channel_credentials(pki["ca_pem"], pki["client_key"], pki["client_pem"])
        with grpc.secure_channel(server.target, known) as channel:
            assert _capabilities(channel).models


def _hold_open(release: threading.Event, frames: list[bytes] = ()):
    """Requests for a Stream call that stays open until `release` is set."""
    yield from (pb.StreamRequest(sequence=i, bitstream=f) for i, f in enumerate(frames))
    release.wait(60)


def test_streams_per_client_limit(shared_data: Path):
    """--max-streams-per-client 2: a third concurrent stream from the same client ends RESOURCE_EXHAUSTED and is
    counted; closing one lets a new one in."""
    (frame,) = encode_frames(shared_data / "coco-val164" / "images", 1)
    with background(_config(max_streams_per_client=2)) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        releases = [threading.Event() for _ in range(2)]
        calls = [stub.Stream(_hold_open(r, [frame]), timeout=60) for r in releases]
        try:
            assert [next(c).WhichOneof("outcome") for c in calls] == ["result", "result"]
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Stream(iter([pb.StreamRequest(sequence=0, bitstream=frame)]), timeout=30))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams-per-client" in refused.value.details()
            assert server.registry.get_sample_value("baf_refused_calls_total", {"limit": "streams_per_client"}) == 1
            releases[0].set()
            assert list(calls[0]) == []
            (answer,) = stub.Stream(iter([pb.StreamRequest(sequence=0, bitstream=frame)]), timeout=60)
            assert answer.WhichOneof("outcome") == "result"
        finally:
            for r in releases:
                r.set()


def test_message_size_limit(shared_data: Path):
    """A frame over --max-frame-bytes is answered TOO_LARGE in-band; a message far over it is refused by the
    transport before it is read, ending the call RESOURCE_EXHAUSTED. Both are counted."""
    (frame,) = encode_frames(shared_data / "coco-val164" / "images", 1)
    limit = 64 << 10
    with background(_config(max_frame_bytes=limit)) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DetectionServiceStub(channel)
        requests = [pb.StreamRequest(sequence=0, bitstream=bytes(limit + 1)),
                    pb.StreamRequest(sequence=1, bitstream=frame)]
        answers = list(stub.Stream(iter(requests), timeout=60))
        assert answers[0].error.code == pb.FRAME_ERROR_CODE_TOO_LARGE
        assert answers[1].WhichOneof("outcome") == "result"
        assert server.registry.get_sample_value("baf_frames_total", {"status": "too_large"}) == 1
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Stream(iter([pb.StreamRequest(sequence=0, bitstream=bytes(4 << 20))]), timeout=60))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as refused:
            stub.DetectFrame(pb.DetectFrameRequest(bitstream=bytes(4 << 20)), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_no_secret_in_logs_or_metric_labels(pki, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Token, a wrong token a client sent, and key material never reach the log (at DEBUG) or /metrics; metric
    labels take values from fixed sets only (no client address or identity)."""
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-9f3c"
    config = _config(tls_cert=pki["cert"], tls_key=pki["key"], tls_client_ca=pki["ca"], token=TOKEN,
                     max_streams_per_client=1)
    assert TOKEN not in repr(config)
    with background(config) as server:
        credentials = grpc.ssl_channel_credentials(pki["ca_pem"], pki["client_key"], pki["client_pem"])
        with grpc.secure_channel(server.target, credentials) as channel:
            stub = pb_grpc.DetectionServiceStub(channel)
            for metadata in ([("authorization", f"Bearer {wrong}")], None):
                with pytest.raises(grpc.RpcError):
                    _capabilities(channel, metadata)
            good = [("authorization", f"Bearer {TOKEN}")]
            assert _capabilities(channel, good).models
            junk = [pb.StreamRequest(sequence=0, bitstream=b"BAFS" + TOKEN.encode())]
            assert list(stub.Stream(iter(junk), metadata=good, timeout=30))[0].error.message
            release = threading.Event()
            held = stub.Stream(_hold_open(release), metadata=good, timeout=30)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Stream(iter(junk), metadata=good, timeout=30))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            list(held)
        exposition = generate_latest(server.registry).decode()
    key_body = pki["key"].read_text().splitlines()[1]
    for secret in (TOKEN, wrong, key_body, pki["client_key"].decode().splitlines()[1]):
        assert secret not in caplog.text and secret not in exposition
    allowed = {
        "method": {p + m for m in ("Stream", "DetectFrame", "GetCapabilities") for p in ("", f"/{SERVICE_NAME}/")},
        "code": {c.name for c in grpc.StatusCode},
        "status": {"ok"} | {status_label(v) for v in pb.FrameErrorCode.values()},
        "stage": set(STAGES), "limit": set(LIMITS), "reason": {"queue_full", "drop_oldest", "cancelled", "deadline"},
        "le": None,
    }  # fmt: skip
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for label, value in sample.labels.items():
                assert label in allowed, (family.name, label)
                assert allowed[label] is None or value in allowed[label], (family.name, label, value)
    assert "127.0.0.1" not in exposition and "client" not in {v for s in exposition.splitlines() for v in s.split('"')}


@pytest.fixture
def shipped(tmp_path: Path) -> dict[str, Path]:
    """The committed checkpoint (the working tree's may be mid-training) and the packaged ranking, copied."""
    out = {}
    for suffix in (".json", ".safetensors"):
        path = tmp_path / Path(SHIPPED_CHECKPOINT + suffix).name
        path.write_bytes(subprocess.run(["git", "show", f"HEAD:{SHIPPED_CHECKPOINT}{suffix}"], cwd=REPO,
                                        capture_output=True, check=True).stdout)
        out[suffix] = path
    out["ranking"] = tmp_path / "ranking.json"
    shutil.copy(packaged_ranking_path("yolov3-tiny", 8), out["ranking"])
    return out


def test_models_load_without_pickle(shipped, monkeypatch):
    """Weights, ranking and checkpoint load with every unpickling entry point made to fail."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used to load a model file")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    pipeline, served = load_pipeline(ServerConfig(device="cpu", predictor=shipped[".json"], ranking=shipped["ranking"]))
    assert served.restoration == "baf-predictor" and pipeline.ranking.id == json.loads(
        shipped[".json"].read_text())["ranking_id"]


def test_tampered_model_files_are_refused(shipped, tmp_path: Path):
    """One byte changed in the checkpoint weights, or two channels swapped in the ranking: refused by hash."""
    weights = shipped[".safetensors"]
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_predictor(shipped[".json"])
    ranking = json.loads(shipped["ranking"].read_text())
    ranking["order"][0], ranking["order"][1] = ranking["order"][1], ranking["order"][0]
    shipped["ranking"].write_text(json.dumps(ranking))
    with pytest.raises(RankingError, match="does not match"):
        read_ranking(shipped["ranking"])
    darknet = tmp_path / "yolov3-tiny.weights"
    darknet.write_bytes(bytes(find_weights(get_spec("yolov3-tiny")).read_bytes()[:-1]) + b"\x01")
    with pytest.raises(WeightsError, match="sha256"):
        find_weights(get_spec("yolov3-tiny"), darknet)
