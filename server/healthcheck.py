"""`python -m server.healthcheck`: exit 0 when the server's `grpc.health.v1` check says SERVING, else 1.

The probe of the container images and of exec probes in Kubernetes (the kubelet's own gRPC probe
cannot speak TLS). With no flags it asks 127.0.0.1 on the port the server itself was configured
with (`BAF_PORT`, else the port of `BAF_LISTEN`, else 50051), so an image's HEALTHCHECK needs no
arguments. Over TLS it needs the CA that signed the server certificate (`--tls-ca`) and, where the
server requires client certificates, a client pair. Health stays open when a bearer token is
required, so the probe sends none. One line on stderr says why a check failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "baf.v1.DetectionService"
DEFAULT_PORT = 50051


def default_address(environ: Mapping[str, str]) -> str:
    """127.0.0.1 on the server's configured gRPC port (BAF_PORT, else BAF_LISTEN's port, else 50051)."""
    port = environ.get("BAF_PORT") or environ.get("BAF_LISTEN", f":{DEFAULT_PORT}").rsplit(":", 1)[-1]
    return f"127.0.0.1:{port}"


def check(address: str, *, service: str = SERVICE, timeout_s: float = 3.0, tls_ca: Path | None = None,
          tls_cert: Path | None = None, tls_key: Path | None = None, server_name: str | None = None) -> str:
    """The serving status name (SERVING, NOT_SERVING, ...) of `service` at `address`.

    Raises grpc.RpcError when the call fails (nothing listening, TLS mismatch, unknown service).
    """
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls_ca.read_bytes(),
            private_key=tls_key.read_bytes() if tls_key else None,
            certificate_chain=tls_cert.read_bytes() if tls_cert else None,
        )
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one check; 0 when SERVING, 1 otherwise (2 for bad flags, from argparse)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m server.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=default_address(environ),
                        help="HOST:PORT of the server (default: %(default)s, from BAF_PORT / BAF_LISTEN)")
    parser.add_argument("--service", default=SERVICE, help="service to ask about; '' is the whole server "
                                                           "(default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds for the call (default: %(default)s)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA of the server certificate: use TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, where the server requires mTLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--server-name", help="name to check the server certificate against (default: the host)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert is not None and args.tls_ca is None:
        parser.error("--tls-cert needs --tls-ca")
    try:
        status = check(args.address, service=args.service, timeout_s=args.timeout, tls_ca=args.tls_ca,
                       tls_cert=args.tls_cert, tls_key=args.tls_key, server_name=args.server_name)
    except grpc.RpcError as e:
        print(f"unhealthy: {args.address}: {e.code().name} {e.details() or ''}".rstrip(), file=sys.stderr)
        return 1
    except OSError as e:  # an unreadable TLS file
        print(f"unhealthy: {e}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {args.address} {args.service or '(server)'}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
