"""The server's one configuration object: command-line flags > `BAF_*` environment variables > defaults.

Every field is a `--flag` (field `max_batch` is `--max-batch` and `BAF_MAX_BATCH`), except the bearer
token, which comes from `--token-file` or `BAF_TOKEN` only so that it never shows in `ps`. Values are
checked once, at start-up; a bad one raises `ConfigError` naming its flag and environment variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baf.errors import ConfigError
from baf.packaged import is_packaged_variant

OVERFLOW_POLICIES = ("reject", "drop-oldest")
RESTORATIONS = ("predictor", "zeros")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(?P<port>\d+)")
_GRPC_MAX_MESSAGE = (1 << 31) - 1
TOKEN_ENV = "BAF_TOKEN"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `baf serve` / `python -m server` can be told; see each field's help."""

    listen: str = _opt("[::]:50051", "address to serve gRPC on, HOST:PORT; port 0 picks a free one")
    port: int | None = _opt(None, "shorthand: serve on this port of the --listen host")
    port_file: Path | None = _opt(None, "write the bound gRPC port here once serving (for tests and scripts)")
    metrics_port: int | None = _opt(9464, "Prometheus /metrics HTTP port; 0 picks a free one, 'off' disables")
    metrics_host: str = _opt("0.0.0.0", "address the metrics HTTP server binds")
    model: str = _opt("yolov3-tiny", "model served")
    layer: int | None = _opt(None, "split layer (default: the model's)")
    weights: Path | None = _opt(None, "darknet .weights file (default: the model's own)")
    ranking: Path | None = _opt(None, "channel ranking file, or a packaged one by name, e.g. residual-pca (default: "
                                      "the model's own, and every packaged ranking with a packaged checkpoint)")
    restoration: str = _opt("predictor", "how missing channels are restored", choices=RESTORATIONS)
    predictor: Path | None = _opt(None, "BaF predictor checkpoint (.json or .safetensors; default: the packaged "
                                        "one serving the most C and n)")
    conf_threshold: float = _opt(0.25, "detection confidence threshold")
    iou_threshold: float = _opt(0.45, "NMS IoU threshold")
    device: str = _opt("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    max_batch: int = _opt(8, "most frames run through the model at once, across streams")
    max_batch_delay_ms: float = _opt(5.0, "longest a frame waits for others to fill its batch")
    max_queue: int = _opt(64, "most frames waiting for the model; beyond it --overflow applies")
    overflow: str = _opt("reject", "full queue: reject the new frame, or drop the oldest waiting one",
                         choices=OVERFLOW_POLICIES)
    stream_window: int = _opt(4, "frames of one stream in flight at once (decoded, queued or running)")
    max_frame_bytes: int = _opt(16 << 20, "largest frame bitstream accepted, bytes")
    max_streams_per_client: int | None = _opt(None, "most Stream calls open at once from one client (its mTLS "
                                                    "certificate's common name, else its IP address); off: no limit")
    decode_threads: int = _opt(2, "threads decoding bitstreams (model work has one thread of its own)")
    drain_seconds: float = _opt(10.0, "on SIGTERM/SIGINT, how long in-flight calls may finish")
    tls_cert: Path | None = _opt(None, "PEM server certificate (chain); with --tls-key enables TLS")
    tls_key: Path | None = _opt(None, "PEM private key of --tls-cert")
    tls_client_ca: Path | None = _opt(None, "PEM CA bundle: require client certificates it signed (mTLS)")
    token_file: Path | None = _opt(None, f"file holding the bearer token clients must send (or set {TOKEN_ENV})")
    token: str | None = field(default=None, repr=False, metadata={"flag": False})

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> ConfigError:
            return ConfigError(f"{flag_of(name)} / {env_of(name)}: {why}")

        if not _LISTEN.fullmatch(self.listen):
            raise fail("listen", f"expected HOST:PORT such as [::]:50051 or 127.0.0.1:0, got {self.listen!r}")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise fail(name, f"must be a port number 0..65535, got {value}")
        if int(self.listen.rsplit(":", 1)[1]) > 65535:
            raise fail("listen", f"port must be 0..65535, got {self.listen!r}")
        for name in ("conf_threshold", "iou_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise fail(name, f"must be in [0, 1], got {getattr(self, name)}")
        for name, low in (("max_batch", 1), ("max_queue", 1), ("stream_window", 1), ("decode_threads", 1),
                          ("max_frame_bytes", 1024)):
            if getattr(self, name) < low:
                raise fail(name, f"must be >= {low}, got {getattr(self, name)}")
        if self.max_streams_per_client is not None and self.max_streams_per_client < 1:
            raise fail("max_streams_per_client", f"must be >= 1 or off, got {self.max_streams_per_client}")
        if self.max_frame_bytes > _GRPC_MAX_MESSAGE - 4096:
            raise fail("max_frame_bytes", f"must be below 2 GiB (gRPC's message limit), got {self.max_frame_bytes}")
        for name in ("max_batch_delay_ms", "drain_seconds"):
            if not 0 <= getattr(self, name) < 3600:
                raise fail(name, f"must be in [0, 3600), got {getattr(self, name)}")
        if not _DEVICE.fullmatch(self.device):
            raise fail("device", f"expected auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise fail("overflow", f"expected one of {', '.join(OVERFLOW_POLICIES)}, got {self.overflow!r}")
        if self.restoration not in RESTORATIONS:
            raise fail("restoration", f"expected one of {', '.join(RESTORATIONS)}, got {self.restoration!r}")
        if self.predictor is not None and self.restoration == "zeros":
            raise fail("predictor", "a predictor checkpoint was given with --restoration zeros; choose one")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise fail("tls_cert" if self.tls_cert is None else "tls_key", "TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise fail("tls_client_ca", "client certificates (mTLS) need server TLS: give --tls-cert and --tls-key")
        for name in ("weights", "ranking", "predictor", "tls_cert", "tls_key", "tls_client_ca", "token_file"):
            path = getattr(self, name)
            if name == "ranking" and path is not None and is_packaged_variant(path):
                continue
            if path is not None and not path.is_file():
                raise fail(name, f"file {path} not found")
        if self.token_file is not None and self.token is not None:
            raise ConfigError(f"both --token-file / BAF_TOKEN_FILE and {TOKEN_ENV} are set; choose one")
        if self.token is not None and not self.token.strip():
            raise ConfigError(f"{TOKEN_ENV} is set but empty")

    @property
    def address(self) -> str:
        """The gRPC address to bind: --listen, with its port replaced by --port when given."""
        return self.listen if self.port is None else f"{self.listen.rsplit(':', 1)[0]}:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.tls_cert is not None

    def bearer_token(self) -> str | None:
        """The token clients must present, read from --token-file or BAF_TOKEN; None when auth is off."""
        if self.token_file is None:
            return self.token.strip() if self.token is not None else None
        try:
            token = self.token_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--token-file / BAF_TOKEN_FILE: cannot read {self.token_file} ({e})") from None
        if not token:
            raise ConfigError(f"--token-file / BAF_TOKEN_FILE: {self.token_file} is empty")
        return token

    def tls_files(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, client CA or None), read from the PEM files."""
        if self.tls_cert is None or self.tls_key is None:
            raise ConfigError("TLS is not configured: give --tls-cert and --tls-key")
        try:
            ca = self.tls_client_ca.read_bytes() if self.tls_client_ca is not None else None
            return self.tls_cert.read_bytes(), self.tls_key.read_bytes(), ca
        except OSError as e:
            raise ConfigError(f"cannot read a TLS file: {e}") from None


def flag_of(name: str) -> str:
    """The command-line flag of field `name`."""
    return "--" + name.replace("_", "-")


def env_of(name: str) -> str:
    """The environment variable of field `name`."""
    return "BAF_" + name.upper()


def _parser_for(hint: Any) -> Callable[[str], Any]:
    """A str -> value converter for a field's type (`X | None` accepts 'off' / 'none' / '' as None)."""
    args = typing.get_args(hint)
    optional = type(None) in args and (typing.get_origin(hint) in (typing.Union, types.UnionType))
    base = next(a for a in args if a is not type(None)) if optional else hint

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in ("", "none", "off"):
            return None
        return base(text)

    return parse


def _flag_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(ServerConfig) if f.metadata.get("flag", True)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per field; defaults stay None here so that `from_args` can tell a flag from its absence."""
    for f in _flag_fields():
        default = "off" if f.name == "metrics_port" and f.default is None else f.default
        choices = f.metadata.get("choices")
        parser.add_argument(
            flag_of(f.name), dest=f.name, default=None, metavar=f.name.upper(),
            help=f"{f.metadata['help']} (env {env_of(f.name)}; default: {default})"
            + (f"; one of {', '.join(choices)}" if choices else ""),
        )  # fmt: skip


def from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> ServerConfig:
    """The config from parsed flags (strings, see `add_arguments`), then `BAF_*` variables, then defaults."""
    hints = typing.get_type_hints(ServerConfig)
    values: dict[str, Any] = {}
    for f in _flag_fields():
        text, source = getattr(args, f.name, None), flag_of(f.name)
        if text is None and env_of(f.name) in environ:
            text, source = environ[env_of(f.name)], env_of(f.name)
        if text is None:
            continue
        try:
            values[f.name] = _parser_for(hints[f.name])(text)
        except ValueError:
            raise ConfigError(f"{source}: {text!r} is not a valid {_type_name(hints[f.name])}") from None
    if TOKEN_ENV in environ:
        values["token"] = environ[TOKEN_ENV]
    return ServerConfig(**values)


def load(argv: list[str], environ: Mapping[str, str]) -> ServerConfig:
    """Parse `argv` (flags only) with `environ` into a validated config."""
    parser = argparse.ArgumentParser(prog="python -m server")
    add_arguments(parser)
    return from_args(parser.parse_args(argv), environ)


def _type_name(hint: Any) -> str:
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {int: "integer", float: "number", Path: "path", str: "string"}.get(base, str(base))
