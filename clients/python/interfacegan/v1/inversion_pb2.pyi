from interfacegan.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInversionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InversionInfo(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[InvertibleModel]
    def __init__(self, models: _Optional[_Iterable[_Union[InvertibleModel, _Mapping]]] = ...) -> None: ...

class InvertibleModel(_message.Message):
    __slots__ = ("model", "spaces", "has_encoder", "default_steps", "resolution", "default_target_psnr", "max_steps_limit", "default_space", "encoder_sha256", "encoder_psnr", "template_landmarks")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACES_FIELD_NUMBER: _ClassVar[int]
    HAS_ENCODER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_PSNR_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SPACE_FIELD_NUMBER: _ClassVar[int]
    ENCODER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENCODER_PSNR_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    spaces: _containers.RepeatedScalarFieldContainer[_common_pb2.LatentSpace]
    has_encoder: bool
    default_steps: int
    resolution: int
    default_target_psnr: float
    max_steps_limit: int
    default_space: _common_pb2.LatentSpace
    encoder_sha256: str
    encoder_psnr: float
    template_landmarks: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., spaces: _Optional[_Iterable[_Union[_common_pb2.LatentSpace, str]]] = ..., has_encoder: _Optional[bool] = ..., default_steps: _Optional[int] = ..., resolution: _Optional[int] = ..., default_target_psnr: _Optional[float] = ..., max_steps_limit: _Optional[int] = ..., default_space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., encoder_sha256: _Optional[str] = ..., encoder_psnr: _Optional[float] = ..., template_landmarks: _Optional[_Iterable[float]] = ...) -> None: ...

class InvertRequest(_message.Message):
    __slots__ = ("request_id", "model", "space", "image", "align_face", "max_steps", "target_psnr", "stream_progress", "format", "encoder_only")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ALIGN_FACE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_PSNR_FIELD_NUMBER: _ClassVar[int]
    STREAM_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ENCODER_ONLY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    space: _common_pb2.LatentSpace
    image: _common_pb2.Image
    align_face: bool
    max_steps: int
    target_psnr: float
    stream_progress: bool
    format: _common_pb2.ImageFormat
    encoder_only: bool
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., align_face: _Optional[bool] = ..., max_steps: _Optional[int] = ..., target_psnr: _Optional[float] = ..., stream_progress: _Optional[bool] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., encoder_only: _Optional[bool] = ...) -> None: ...

class FaceAlignment(_message.Message):
    __slots__ = ("matrix", "crop_size", "face_box", "faces_found", "landmarks", "detection_score")
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    FACE_BOX_FIELD_NUMBER: _ClassVar[int]
    FACES_FOUND_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_SCORE_FIELD_NUMBER: _ClassVar[int]
    matrix: _containers.RepeatedScalarFieldContainer[float]
    crop_size: int
    face_box: _containers.RepeatedScalarFieldContainer[float]
    faces_found: int
    landmarks: _containers.RepeatedScalarFieldContainer[float]
    detection_score: float
    def __init__(self, matrix: _Optional[_Iterable[float]] = ..., crop_size: _Optional[int] = ..., face_box: _Optional[_Iterable[float]] = ..., faces_found: _Optional[int] = ..., landmarks: _Optional[_Iterable[float]] = ..., detection_score: _Optional[float] = ...) -> None: ...

class InvertResponse(_message.Message):
    __slots__ = ("progress", "code", "reconstruction", "psnr", "ssim", "alignment", "warnings", "final", "aligned_target", "steps", "first_psnr", "stop_reason")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    SSIM_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_TARGET_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FIRST_PSNR_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    code: _common_pb2.LatentBatch
    reconstruction: _common_pb2.Image
    psnr: float
    ssim: float
    alignment: FaceAlignment
    warnings: _containers.RepeatedScalarFieldContainer[str]
    final: bool
    aligned_target: _common_pb2.Image
    steps: int
    first_psnr: float
    stop_reason: str
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., reconstruction: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., psnr: _Optional[float] = ..., ssim: _Optional[float] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., final: _Optional[bool] = ..., aligned_target: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., steps: _Optional[int] = ..., first_psnr: _Optional[float] = ..., stop_reason: _Optional[str] = ...) -> None: ...

class BlendRequest(_message.Message):
    __slots__ = ("photo", "face", "alignment", "format", "feather")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FEATHER_FIELD_NUMBER: _ClassVar[int]
    photo: _common_pb2.Image
    face: _common_pb2.Image
    alignment: FaceAlignment
    format: _common_pb2.ImageFormat
    feather: float
    def __init__(self, photo: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., face: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., feather: _Optional[float] = ...) -> None: ...

class BlendResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...
