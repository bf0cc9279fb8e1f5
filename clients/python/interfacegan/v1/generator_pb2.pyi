from interfacegan.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class LatentSpaceInfo(_message.Message):
    __slots__ = ("space", "shape", "truncated_at_synthesis")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_AT_SYNTHESIS_FIELD_NUMBER: _ClassVar[int]
    space: _common_pb2.LatentSpace
    shape: _containers.RepeatedScalarFieldContainer[int]
    truncated_at_synthesis: bool
    def __init__(self, space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., shape: _Optional[_Iterable[int]] = ..., truncated_at_synthesis: _Optional[bool] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "architecture", "resolution", "latent_spaces", "device", "backend", "precision", "max_batch_size", "max_request_codes", "loaded", "description", "default_truncation_psi", "default_truncation_layers", "load_error", "max_queue_delay_microseconds", "max_queue_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    LATENT_SPACES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_CODES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TRUNCATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    resolution: int
    latent_spaces: _containers.RepeatedCompositeFieldContainer[LatentSpaceInfo]
    device: str
    backend: str
    precision: str
    max_batch_size: int
    max_request_codes: int
    loaded: bool
    description: str
    default_truncation_psi: float
    default_truncation_layers: int
    load_error: str
    max_queue_delay_microseconds: int
    max_queue_size: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., resolution: _Optional[int] = ..., latent_spaces: _Optional[_Iterable[_Union[LatentSpaceInfo, _Mapping]]] = ..., device: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., max_batch_size: _Optional[int] = ..., max_request_codes: _Optional[int] = ..., loaded: _Optional[bool] = ..., description: _Optional[str] = ..., default_truncation_psi: _Optional[float] = ..., default_truncation_layers: _Optional[int] = ..., load_error: _Optional[str] = ..., max_queue_delay_microseconds: _Optional[int] = ..., max_queue_size: _Optional[int] = ...) -> None: ...

class SampleLatentsRequest(_message.Message):
    __slots__ = ("request_id", "model", "space", "count", "seed", "truncation_psi", "truncation_layers")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    space: _common_pb2.LatentSpace
    count: int
    seed: int
    truncation_psi: float
    truncation_layers: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., truncation_psi: _Optional[float] = ..., truncation_layers: _Optional[int] = ...) -> None: ...

class SampleLatentsResponse(_message.Message):
    __slots__ = ("codes",)
    CODES_FIELD_NUMBER: _ClassVar[int]
    codes: _common_pb2.LatentBatch
    def __init__(self, codes: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("request_id", "model", "codes", "format", "truncation_psi", "truncation_layers", "variant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_PSI_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_LAYERS_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    codes: _common_pb2.LatentBatch
    format: _common_pb2.ImageFormat
    truncation_psi: float
    truncation_layers: int
    variant: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., codes: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., truncation_psi: _Optional[float] = ..., truncation_layers: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("offset", "images")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    offset: int
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    def __init__(self, offset: _Optional[int] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ...) -> None: ...
