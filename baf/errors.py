"""The errors we raise on purpose. Each is the user's to fix: `str(e)` is one line they can act on."""


class BafError(Exception):
    """Base of every error raised on purpose; the CLI prints it as one line and exits 2."""


class ModelError(BafError):
    """A model cannot be built or split: bad cfg file, unknown model name, or a layer that cannot be cut."""


class WeightsError(BafError):
    """Weights are missing, damaged, or do not fit the model; the message says what to install or pass."""


class ImageError(BafError):
    """An image file cannot be read or decoded."""


class DatasetError(BafError):
    """An evaluation folder is not a usable COCO-style dataset (images/ plus one instances_*.json)."""


class BitstreamError(BafError, ValueError):
    """A `.baf` bitstream or stream container is truncated or inconsistent; names the check and byte offset."""


class CodecError(BafError, ValueError):
    """A payload codec was misconfigured, or could not encode an image or decode a payload."""


class UnknownCodecError(CodecError):
    """A codec name or wire id that no registered codec has; the message lists the valid ones."""


class CodecUnavailableError(BafError):
    """A codec's external dependency (ffmpeg, libx265, a JPEG XL build) is missing; says what to install."""


class RankingError(BafError):
    """A channel ranking is missing, malformed, or does not match its id, model or layer."""


class CheckpointError(BafError):
    """A predictor checkpoint is missing, damaged, or not the one expected; names expected vs found."""


class TrainingDivergedError(BafError):
    """Training produced a non-finite loss; the message gives the step and suggests a lower --lr."""


class SourceError(BafError):
    """A frame source (image, folder of images, video or camera) cannot be opened or read."""


class HeaderMismatchError(BafError):
    """A bitstream was made for another model, split layer, P, feature size or ranking than the decoder's."""


class ConfigError(BafError):
    """An application setting (command-line flag or BAF_* environment variable) is invalid; names both."""


class ServerError(BafError):
    """Client side: the server refused a call or could not be reached (wraps grpc.RpcError: code and details)."""


class FrameTooLargeError(BafError):
    """A frame's bitstream exceeds the server's --max-frame-bytes."""


class SequenceError(BafError):
    """A stream frame's sequence number is not greater than the previous frame's."""


class OverloadedError(BafError):
    """The server's frame queue is full, so a frame was dropped unprocessed."""


class FrameDeadlineError(BafError):
    """A frame could not be finished before its call's deadline."""
