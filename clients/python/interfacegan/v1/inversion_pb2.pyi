from interfacegan.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaceSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FACE_SELECTION_UNSPECIFIED: _ClassVar[FaceSelection]
    FACE_SELECTION_LARGEST: _ClassVar[FaceSelection]
    FACE_SELECTION_ALL: _ClassVar[FaceSelection]
    FACE_SELECTION_INDICES: _ClassVar[FaceSelection]

class BlendMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BLEND_MODE_UNSPECIFIED: _ClassVar[BlendMode]
    BLEND_MODE_CHANGE: _ClassVar[BlendMode]
    BLEND_MODE_FACE: _ClassVar[BlendMode]
FACE_SELECTION_UNSPECIFIED: FaceSelection
FACE_SELECTION_LARGEST: FaceSelection
FACE_SELECTION_ALL: FaceSelection
FACE_SELECTION_INDICES: FaceSelection
BLEND_MODE_UNSPECIFIED: BlendMode
BLEND_MODE_CHANGE: BlendMode
BLEND_MODE_FACE: BlendMode

class GetInversionInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InversionInfo(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[InvertibleModel]
    def __init__(self, models: _Optional[_Iterable[_Union[InvertibleModel, _Mapping]]] = ...) -> None: ...

class InvertibleModel(_message.Message):
    __slots__ = ("model", "spaces", "has_encoder", "default_steps", "resolution", "default_target_psnr", "max_steps_limit", "default_space", "encoder_sha256", "encoder_psnr", "template_landmarks", "tuning", "default_tuning_steps", "max_faces", "variant_ttl_seconds")
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
    TUNING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TUNING_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    VARIANT_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
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
    tuning: bool
    default_tuning_steps: int
    max_faces: int
    variant_ttl_seconds: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., spaces: _Optional[_Iterable[_Union[_common_pb2.LatentSpace, str]]] = ..., has_encoder: _Optional[bool] = ..., default_steps: _Optional[int] = ..., resolution: _Optional[int] = ..., default_target_psnr: _Optional[float] = ..., max_steps_limit: _Optional[int] = ..., default_space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., encoder_sha256: _Optional[str] = ..., encoder_psnr: _Optional[float] = ..., template_landmarks: _Optional[_Iterable[float]] = ..., tuning: _Optional[bool] = ..., default_tuning_steps: _Optional[int] = ..., max_faces: _Optional[int] = ..., variant_ttl_seconds: _Optional[int] = ...) -> None: ...

class InvertRequest(_message.Message):
    __slots__ = ("request_id", "model", "space", "image", "align_face", "max_steps", "target_psnr", "stream_progress", "format", "encoder_only", "skip_tuning", "face_selection", "face_indices", "tuning_steps")
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
    SKIP_TUNING_FIELD_NUMBER: _ClassVar[int]
    FACE_SELECTION_FIELD_NUMBER: _ClassVar[int]
    FACE_INDICES_FIELD_NUMBER: _ClassVar[int]
    TUNING_STEPS_FIELD_NUMBER: _ClassVar[int]
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
    skip_tuning: bool
    face_selection: FaceSelection
    face_indices: _containers.RepeatedScalarFieldContainer[int]
    tuning_steps: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., align_face: _Optional[bool] = ..., max_steps: _Optional[int] = ..., target_psnr: _Optional[float] = ..., stream_progress: _Optional[bool] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., encoder_only: _Optional[bool] = ..., skip_tuning: _Optional[bool] = ..., face_selection: _Optional[_Union[FaceSelection, str]] = ..., face_indices: _Optional[_Iterable[int]] = ..., tuning_steps: _Optional[int] = ...) -> None: ...

class InvertedFace(_message.Message):
    __slots__ = ("index", "code", "alignment", "aligned_target", "reconstruction", "psnr", "untuned_psnr")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_TARGET_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PSNR_FIELD_NUMBER: _ClassVar[int]
    UNTUNED_PSNR_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: _common_pb2.LatentBatch
    alignment: FaceAlignment
    aligned_target: _common_pb2.Image
    reconstruction: _common_pb2.Image
    psnr: float
    untuned_psnr: float
    def __init__(self, index: _Optional[int] = ..., code: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ..., aligned_target: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., reconstruction: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., psnr: _Optional[float] = ..., untuned_psnr: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("progress", "code", "reconstruction", "psnr", "ssim", "alignment", "warnings", "final", "aligned_target", "steps", "first_psnr", "stop_reason", "faces", "variant", "untuned_psnr", "faces_dropped", "cpu_seconds_per_face", "tuning_steps")
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
    FACES_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    UNTUNED_PSNR_FIELD_NUMBER: _ClassVar[int]
    FACES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_PER_FACE_FIELD_NUMBER: _ClassVar[int]
    TUNING_STEPS_FIELD_NUMBER: _ClassVar[int]
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
    faces: _containers.RepeatedCompositeFieldContainer[InvertedFace]
    variant: str
    untuned_psnr: float
    faces_dropped: int
    cpu_seconds_per_face: float
    tuning_steps: int
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., reconstruction: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., psnr: _Optional[float] = ..., ssim: _Optional[float] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., final: _Optional[bool] = ..., aligned_target: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., steps: _Optional[int] = ..., first_psnr: _Optional[float] = ..., stop_reason: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[InvertedFace, _Mapping]]] = ..., variant: _Optional[str] = ..., untuned_psnr: _Optional[float] = ..., faces_dropped: _Optional[int] = ..., cpu_seconds_per_face: _Optional[float] = ..., tuning_steps: _Optional[int] = ...) -> None: ...

class BlendRequest(_message.Message):
    __slots__ = ("photo", "face", "alignment", "format", "feather", "reconstruction", "more_faces", "mode", "crop_size", "change_smoothing")
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FEATHER_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    MORE_FACES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    photo: _common_pb2.Image
    face: _common_pb2.Image
    alignment: FaceAlignment
    format: _common_pb2.ImageFormat
    feather: float
    reconstruction: _common_pb2.Image
    more_faces: _containers.RepeatedCompositeFieldContainer[BlendFace]
    mode: BlendMode
    crop_size: int
    change_smoothing: float
    def __init__(self, photo: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., face: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., feather: _Optional[float] = ..., reconstruction: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., more_faces: _Optional[_Iterable[_Union[BlendFace, _Mapping]]] = ..., mode: _Optional[_Union[BlendMode, str]] = ..., crop_size: _Optional[int] = ..., change_smoothing: _Optional[float] = ...) -> None: ...

class BlendFace(_message.Message):
    __slots__ = ("face", "reconstruction", "alignment")
    FACE_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    face: _common_pb2.Image
    reconstruction: _common_pb2.Image
    alignment: FaceAlignment
    def __init__(self, face: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., reconstruction: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., alignment: _Optional[_Union[FaceAlignment, _Mapping]] = ...) -> None: ...

class BlendResponse(_message.Message):
    __slots__ = ("image", "mode", "source_crops", "result_crops", "changed_outside_mask", "change_smoothing")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CROPS_FIELD_NUMBER: _ClassVar[int]
    RESULT_CROPS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_OUTSIDE_MASK_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    mode: BlendMode
    source_crops: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    result_crops: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    changed_outside_mask: int
    change_smoothing: float
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., mode: _Optional[_Union[BlendMode, str]] = ..., source_crops: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., result_crops: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., changed_outside_mask: _Optional[int] = ..., change_smoothing: _Optional[float] = ...) -> None: ...
