"""Bearer token and TLS / mTLS on real servers (server.testing.background: real sockets on 127.0.0.1:0)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baf.v1 import detection_service_pb2 as pb
from baf.v1 import detection_service_pb2_grpc as pb_grpc
from server.config import ServerConfig
from server.testing import background

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
