"""The edge client's settings: one frozen `ClientConfig`, from command-line flags over `BAF_*` variables over defaults.

Every flag has an environment variable named after it (`--server` and `BAF_SERVER`, `--target-kbps` and
`BAF_TARGET_KBPS`, ...); a flag given on the command line wins. The bearer token is never a flag (it
would show in `ps`): it comes from `--token-file` / `BAF_TOKEN_FILE`, or from `BAF_TOKEN`. Values are
checked once, in `ClientConfig.__post_init__`, and a bad one raises `ConfigError` naming the flag and
the variable. This module imports nothing heavy: `baf stream --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from baf.argtypes import positive_int
from baf.errors import ConfigError
from baf.packaged import is_packaged_variant

# C and n when neither the flags nor --target-kbps choose them: n=4 costs at most a point of AP50 at
# C=64 and sends 37% of the bytes of n=8 (docs/FINDINGS.md).
DEFAULT_CHANNELS = 64
DEFAULT_BITS = 4
CODECS = ("jxl", "hevc", "png", "raw")

_ADDRESS = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})$")


def _names(name: str) -> str:
    return f"--{name.replace('_', '-')} / BAF_{name.upper()}"


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Everything `baf stream` needs: what to read, where to send it, how to code it, where results go.

    `channels`, `bits` and `qp` are None when not fixed: with `target_kbps` the rate controller picks
    them, otherwise `channels` and `bits` fall back to DEFAULT_CHANNELS / DEFAULT_BITS and hevc is lossless.
    `progress` None means: a live line on stderr when stderr is a terminal.
    """

    source: str
    server: str
    output: Path | None = None
    annotate: Path | None = None
    frames: int | None = None
    model: str = "yolov3-tiny"
    layer: int | None = None
    weights: Path | None = None
    ranking: Path | None = None
    size: int = 512
    channels: int | None = None
    bits: int | None = None
    codec: str = "jxl"
    qp: int | None = None
    effort: int | None = None
    intra: bool = False
    target_kbps: float | None = None
    window: int = 8
    compare_jpeg: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 10.0
    reconnect_timeout_s: float = 60.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.server) or not 1 <= int(self.server.rsplit(":", 1)[1]) <= 65535:
            raise ConfigError(f"{_names('server')}: expected HOST:PORT (port 1..65535), got {self.server!r}")
        positive = {"frames": self.frames, "size": self.size, "window": self.window, "channels": self.channels,
                    "bits": self.bits, "target_kbps": self.target_kbps, "connect_timeout_s": self.connect_timeout_s,
                    "reconnect_timeout_s": self.reconnect_timeout_s, "backoff_initial_s": self.backoff_initial_s,
                    "backoff_max_s": self.backoff_max_s}  # fmt: skip
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ConfigError(f"{_names(name)}: must be > 0, got {value}")
        if self.bits is not None and self.bits > 16:
            raise ConfigError(f"{_names('bits')}: n must be in 1..16, got {self.bits}")
        if self.codec not in CODECS:
            raise ConfigError(f"{_names('codec')}: unknown codec {self.codec!r}; choose from {', '.join(CODECS)}")
        if self.qp is not None and (self.codec != "hevc" or not 0 <= self.qp <= 51):
            raise ConfigError(f"{_names('qp')}: applies to hevc only, 0..51; got {self.qp} with {self.codec}")
        if self.effort is not None and (self.codec != "jxl" or not 1 <= self.effort <= 9):
            raise ConfigError(f"{_names('effort')}: applies to jxl only, 1..9; got {self.effort} with {self.codec}")
        if self.intra and self.codec != "hevc":
            raise ConfigError(f"{_names('intra')}: applies to hevc only (other codecs always code frames alone)")
        fixed = [name for name in ("channels", "bits", "qp") if getattr(self, name) is not None]
        if self.target_kbps is not None and fixed:
            raise ConfigError(
                f"{_names('target_kbps')} adapts C, n and QP itself; drop {', '.join(_names(n) for n in fixed)}"
            )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(f"{_names('backoff_max_s')}: must be >= {_names('backoff_initial_s')}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"{_names('tls_cert')} and {_names('tls_key')} (mTLS) go together")
        for name in ("tls_ca", "tls_cert", "tls_key", "token_file", "weights", "ranking"):
            path = getattr(self, name)
            if name == "ranking" and path is not None and is_packaged_variant(path):
                continue
            if path is not None and not path.is_file():
                raise ConfigError(f"{_names(name)}: no such file {path}")
        for name in ("output", "annotate"):
            path = getattr(self, name)
            if path is not None and str(path) != "-" and not path.parent.is_dir():
                raise ConfigError(f"{_names(name)}: folder {path.parent} does not exist")
        if self.annotate is not None and str(self.annotate) == "-":
            raise ConfigError(f"{_names('annotate')}: needs a file name (e.g. out.mp4)")
        if self.token is not None and not self.token.strip():
            raise ConfigError("BAF_TOKEN is set but empty")

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS (a CA file is given; the system roots are not used implicitly)."""
        return self.tls_ca is not None

    def bearer_token(self) -> str | None:
        """The bearer token from --token-file / BAF_TOKEN_FILE, else BAF_TOKEN, else None."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as e:
                raise ConfigError(f"{_names('token_file')}: cannot read {self.token_file}: {e.strerror}") from None
            if not token:
                raise ConfigError(f"{_names('token_file')}: {self.token_file} is empty")
            return token
        return self.token.strip() if self.token is not None else None

    def read_tls(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA, client key, client certificate chain) as PEM bytes, None where not configured."""
        out = []
        for name in ("tls_ca", "tls_key", "tls_cert"):
            path = getattr(self, name)
            try:
                out.append(path.read_bytes() if path is not None else None)
            except OSError as e:
                raise ConfigError(f"{_names(name)}: cannot read {path}: {e.strerror}") from None
        return out[0], out[1], out[2]


def _flag_bool(text: str) -> bool:
    """Booleans as environment variables spell them."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


# (field, flag type, help); every field but `source` and `token` is a flag with a BAF_ variable.
_FLAGS: tuple[tuple[str, object, str], ...] = (
    ("server", str, "HOST:PORT of the BaF server (required)"),
    ("output", Path, "write one JSON object per frame to this file ('-': stdout)"),
    ("annotate", Path, "write the source frames with boxes and labels to this video (H.264 .mp4)"),
    ("frames", positive_int, "stream at most this many frames"),
    ("model", str, "model the server runs (default: %(default)s)"),
    ("layer", int, "split layer (default: the model's)"),
    ("weights", Path, "darknet .weights file (default: the model's own)"),
    ("ranking", Path, "ranking file, or a packaged one by name, e.g. residual-pca (default: the model's own)"),
    ("size", positive_int, "model input size (default: %(default)s)"),
    ("channels", positive_int, f"fix C, the channels sent (default: {DEFAULT_CHANNELS})"),
    ("bits", positive_int, f"fix n, bits per element (default: {DEFAULT_BITS})"),
    ("codec", str, "payload codec: jxl (default), hevc, png or raw"),
    ("qp", int, "fix the hevc QP 0..51 (default: lossless)"),
    ("effort", int, "jxl effort 1..9 (default: the codec's)"),
    ("intra", _flag_bool, "hevc on a video: code every frame on its own (default: inter prediction)"),
    ("target_kbps", float, "adapt C, n (and the hevc QP) frame by frame toward this many kbit/s"),
    ("window", positive_int, "frames in flight without a result, so the server can batch (default: %(default)s)"),
    ("compare_jpeg", _flag_bool, "also size every frame as a JPEG for the summary (Pillow quality 90; JPEG "
                                 "image files: their own size)"),
    ("tls_ca", Path, "PEM CA file: connect with TLS, trusting this CA"),
    ("tls_cert", Path, "PEM client certificate for mTLS (with --tls-key)"),
    ("tls_key", Path, "PEM client key for mTLS (with --tls-cert)"),
    ("token_file", Path, "file holding the bearer token (else env BAF_TOKEN)"),
    ("connect_timeout_s", float, "give up on the first connection after this many seconds (default: %(default)s)"),
    ("reconnect_timeout_s", float, "give up reconnecting after this long without a result (default: %(default)s)"),
    ("backoff_initial_s", float, "first reconnect delay, x1.6 per retry with 20% jitter (default: %(default)s)"),
    ("backoff_max_s", float, "longest reconnect delay (default: %(default)s)"),
)
_BOOLEAN = ("intra", "compare_jpeg")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the positional SOURCE and one --flag per ClientConfig field (defaults come in `from_args`)."""
    defaults = {f.name: f.default for f in fields(ClientConfig)}
    parser.add_argument("source", help="video file or URL, folder of images, image file, or camera (/dev/video0)")
    for name, kind, text in _FLAGS:
        flag = "--" + name.replace("_", "-")
        help_text = f"{text.replace('%(default)s', str(defaults[name]))} [env BAF_{name.upper()}]".replace("%", "%%")
        if name in _BOOLEAN:
            parser.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        else:
            short = ("-o",) if name == "output" else ()
            parser.add_argument(*short, flag, type=kind, default=None, help=help_text)  # type: ignore[arg-type]
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a live line on stderr (default: only when stderr is a terminal)")


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClientConfig:
    """The config from parsed flags, then BAF_* variables of `environ` (default os.environ), then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {"source": args.source, "progress": args.progress}
    for name, kind, _ in _FLAGS:
        value = getattr(args, name)
        if value is None and f"BAF_{name.upper()}" in environ:
            text = environ[f"BAF_{name.upper()}"]
            convert = _flag_bool if name in _BOOLEAN else kind
            try:
                value = convert(text)  # type: ignore[operator]
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ConfigError(f"{_names(name)}: bad value {text!r} in BAF_{name.upper()}: {e}") from None
        if value is not None:
            values[name] = value
    if "server" not in values:
        raise ConfigError(f"{_names('server')}: the server address is required")
    if "BAF_TOKEN" in environ:
        values["token"] = environ["BAF_TOKEN"]
    return ClientConfig(**values)  # type: ignore[arg-type]
