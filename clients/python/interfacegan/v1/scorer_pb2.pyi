from interfacegan.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IdentityRequest(_message.Message):
    __slots__ = ("references", "images", "include_embeddings")
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    include_embeddings: bool
    def __init__(self, references: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class IdentityResponse(_message.Message):
    __slots__ = ("distances", "same_person_threshold", "embeddings", "reference_embeddings")
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    SAME_PERSON_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    distances: _containers.RepeatedScalarFieldContainer[float]
    same_person_threshold: float
    embeddings: _containers.RepeatedScalarFieldContainer[float]
    reference_embeddings: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, distances: _Optional[_Iterable[float]] = ..., same_person_threshold: _Optional[float] = ..., embeddings: _Optional[_Iterable[float]] = ..., reference_embeddings: _Optional[_Iterable[float]] = ...) -> None: ...

class ListAttributesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AttributeInfo(_message.Message):
    __slots__ = ("name", "unit", "min_value", "max_value", "source_model", "group", "description", "plugin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MODEL_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    unit: str
    min_value: float
    max_value: float
    source_model: str
    group: str
    description: str
    plugin: bool
    def __init__(self, name: _Optional[str] = ..., unit: _Optional[str] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., source_model: _Optional[str] = ..., group: _Optional[str] = ..., description: _Optional[str] = ..., plugin: _Optional[bool] = ...) -> None: ...

class ListAttributesResponse(_message.Message):
    __slots__ = ("attributes",)
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeInfo]
    def __init__(self, attributes: _Optional[_Iterable[_Union[AttributeInfo, _Mapping]]] = ...) -> None: ...

class GetScorerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ScorerInfo(_message.Message):
    __slots__ = ("attributes", "providers", "max_batch_size", "max_request_images", "max_image_pixels", "face_threshold")
    class ProvidersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    FACE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeInfo]
    providers: _containers.ScalarMap[str, str]
    max_batch_size: int
    max_request_images: int
    max_image_pixels: int
    face_threshold: float
    def __init__(self, attributes: _Optional[_Iterable[_Union[AttributeInfo, _Mapping]]] = ..., providers: _Optional[_Mapping[str, str]] = ..., max_batch_size: _Optional[int] = ..., max_request_images: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., face_threshold: _Optional[float] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "images", "attributes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class ImageScores(_message.Message):
    __slots__ = ("scores", "face_found", "face_score")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FACE_FOUND_FIELD_NUMBER: _ClassVar[int]
    FACE_SCORE_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.AttributeScore]
    face_found: bool
    face_score: float
    def __init__(self, scores: _Optional[_Iterable[_Union[_common_pb2.AttributeScore, _Mapping]]] = ..., face_found: _Optional[bool] = ..., face_score: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("offset", "results")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    offset: int
    results: _containers.RepeatedCompositeFieldContainer[ImageScores]
    def __init__(self, offset: _Optional[int] = ..., results: _Optional[_Iterable[_Union[ImageScores, _Mapping]]] = ...) -> None: ...
