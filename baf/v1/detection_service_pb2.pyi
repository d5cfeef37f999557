from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_ERROR_CODE_UNSPECIFIED: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_MALFORMED_BITSTREAM: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_UNSUPPORTED: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_TOO_LARGE: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_DROPPED: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_OUT_OF_ORDER: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_DEADLINE_EXCEEDED: _ClassVar[FrameErrorCode]
    FRAME_ERROR_CODE_INTERNAL: _ClassVar[FrameErrorCode]
FRAME_ERROR_CODE_UNSPECIFIED: FrameErrorCode
FRAME_ERROR_CODE_MALFORMED_BITSTREAM: FrameErrorCode
FRAME_ERROR_CODE_UNSUPPORTED: FrameErrorCode
FRAME_ERROR_CODE_TOO_LARGE: FrameErrorCode
FRAME_ERROR_CODE_DROPPED: FrameErrorCode
FRAME_ERROR_CODE_OUT_OF_ORDER: FrameErrorCode
FRAME_ERROR_CODE_DEADLINE_EXCEEDED: FrameErrorCode
FRAME_ERROR_CODE_INTERNAL: FrameErrorCode

class StreamRequest(_message.Message):
    __slots__ = ("sequence", "bitstream")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    bitstream: bytes
    def __init__(self, sequence: _Optional[int] = ..., bitstream: _Optional[bytes] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("sequence", "result", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    result: FrameResult
    error: FrameError
    def __init__(self, sequence: _Optional[int] = ..., result: _Optional[_Union[FrameResult, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ...) -> None: ...

class DetectFrameRequest(_message.Message):
    __slots__ = ("bitstream",)
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    bitstream: bytes
    def __init__(self, bitstream: _Optional[bytes] = ...) -> None: ...

class DetectFrameResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: FrameResult
    def __init__(self, result: _Optional[_Union[FrameResult, _Mapping]] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("models", "codecs", "limits", "server_version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelCapability]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    server_version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelCapability, _Mapping]]] = ..., codecs: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., server_version: _Optional[str] = ...) -> None: ...

class ModelCapability(_message.Message):
    __slots__ = ("model", "split_layer", "channels_total", "ranking_ids", "channels", "bits", "restoration", "checkpoint", "class_names")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPLIT_LAYER_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RANKING_IDS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    RESTORATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    model: str
    split_layer: int
    channels_total: int
    ranking_ids: _containers.RepeatedScalarFieldContainer[str]
    channels: _containers.RepeatedScalarFieldContainer[int]
    bits: _containers.RepeatedScalarFieldContainer[int]
    restoration: str
    checkpoint: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., split_layer: _Optional[int] = ..., channels_total: _Optional[int] = ..., ranking_ids: _Optional[_Iterable[str]] = ..., channels: _Optional[_Iterable[int]] = ..., bits: _Optional[_Iterable[int]] = ..., restoration: _Optional[str] = ..., checkpoint: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_frame_bytes", "max_batch", "max_queue")
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_frame_bytes: int
    max_batch: int
    max_queue: int
    def __init__(self, max_frame_bytes: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_queue: _Optional[int] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("detections", "bytes_received", "timings")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    bytes_received: int
    timings: FrameTimings
    def __init__(self, detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., bytes_received: _Optional[int] = ..., timings: _Optional[_Union[FrameTimings, _Mapping]] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("box", "score", "class_index", "category_id", "class_name")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    box: BoundingBox
    score: float
    class_index: int
    category_id: int
    class_name: str
    def __init__(self, box: _Optional[_Union[BoundingBox, _Mapping]] = ..., score: _Optional[float] = ..., class_index: _Optional[int] = ..., category_id: _Optional[int] = ..., class_name: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class FrameTimings(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "dequantize_ms", "predict_ms", "backend_ms", "nms_ms", "total_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    DEQUANTIZE_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICT_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MS_FIELD_NUMBER: _ClassVar[int]
    NMS_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    dequantize_ms: float
    predict_ms: float
    backend_ms: float
    nms_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., dequantize_ms: _Optional[float] = ..., predict_ms: _Optional[float] = ..., backend_ms: _Optional[float] = ..., nms_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: FrameErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[FrameErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...
