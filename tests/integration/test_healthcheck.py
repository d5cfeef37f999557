"""`python -m server.healthcheck` (the images' HEALTHCHECK and the exec probe) against real servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ServerConfig
from server.healthcheck import default_address, main
from server.testing import background
from tests.integration.server_util import REPO, free_port
from tests.integration.test_server_security import pki  # noqa: F401  (the test CA and certificates)

pytestmark = pytest.mark.slow


def test_default_address_follows_the_server_config():
    assert default_address({}) == "127.0.0.1:50051"
    assert default_address({"BAF_LISTEN": "[::]:6000"}) == "127.0.0.1:6000"
    assert default_address({"BAF_LISTEN": "[::]:6000", "BAF_PORT": "7000"}) == "127.0.0.1:7000"


def test_plain_server_serving_then_gone(capsys: pytest.CaptureFixture[str]):
    config = ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu")
    with background(config) as server:
        # As the image runs it: a child process that finds the port in BAF_PORT.
        probe = subprocess.run([sys.executable, "-m", "server.healthcheck"], cwd=REPO, capture_output=True,
                               text=True, timeout=60, env={"BAF_PORT": str(server.port), "PATH": ""})
        assert probe.returncode == 0, probe.stderr
        assert main(["--address", server.target, "--service", ""]) == 0
        assert main(["--address", server.target, "--service", "no.such.Service"]) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
        server.drain(0.5)
        assert main(["--address", server.target, "--timeout", "1"]) == 1
    assert main(["--address", f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_mtls_server_needs_the_client_pair(pki, tmp_path: Path):  # noqa: F811
    (tmp_path / "client.pem").write_bytes(pki["client_pem"])
    (tmp_path / "client.key").write_bytes(pki["client_key"])
    config = ServerConfig(listen="127.0.0.1:0", metrics_port=None, device="cpu", tls_cert=pki["cert"],
                          tls_key=pki["key"], tls_client_ca=pki["ca"])
    with background(config) as server:
        address = ["--address", server.target, "--tls-ca", str(pki["ca"]), "--timeout", "5"]
        client = ["--tls-cert", str(tmp_path / "client.pem"), "--tls-key", str(tmp_path / "client.key")]
        assert main([*address, *client]) == 0
        assert main(address) == 1  # no client certificate: the handshake fails
        assert main(["--address", server.target, "--timeout", "2"]) == 1  # plaintext to a TLS port
