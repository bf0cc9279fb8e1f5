from interfacegan.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class DistanceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_MODE_UNSPECIFIED: _ClassVar[DistanceMode]
    DISTANCE_MODE_RELATIVE: _ClassVar[DistanceMode]
    DISTANCE_MODE_ABSOLUTE: _ClassVar[DistanceMode]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
DISTANCE_MODE_UNSPECIFIED: DistanceMode
DISTANCE_MODE_RELATIVE: DistanceMode
DISTANCE_MODE_ABSOLUTE: DistanceMode

class TrainBoundariesRequest(_message.Message):
    __slots__ = ("request_id", "model", "space", "attributes", "num_samples", "chosen_ratio", "train_split", "seed", "svm_c", "reuse_dataset", "solver")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_RATIO_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SVM_C_FIELD_NUMBER: _ClassVar[int]
    REUSE_DATASET_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    space: _common_pb2.LatentSpace
    attributes: _containers.RepeatedScalarFieldContainer[str]
    num_samples: int
    chosen_ratio: float
    train_split: float
    seed: int
    svm_c: float
    reuse_dataset: bool
    solver: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., attributes: _Optional[_Iterable[str]] = ..., num_samples: _Optional[int] = ..., chosen_ratio: _Optional[float] = ..., train_split: _Optional[float] = ..., seed: _Optional[int] = ..., svm_c: _Optional[float] = ..., reuse_dataset: _Optional[bool] = ..., solver: _Optional[str] = ...) -> None: ...

class JobUpdate(_message.Message):
    __slots__ = ("job_id", "state", "progress", "boundaries", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    progress: _common_pb2.Progress
    boundaries: _containers.RepeatedCompositeFieldContainer[BoundaryInfo]
    error: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., boundaries: _Optional[_Iterable[_Union[BoundaryInfo, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class BoundaryInfo(_message.Message):
    __slots__ = ("ref", "dimension", "intercept", "validation_accuracy", "remaining_accuracy", "num_samples", "num_valid", "num_positive", "num_negative", "seed", "parents", "origin", "created_unix", "timings", "chosen_ratio", "train_accuracy", "solver", "dataset", "threshold", "model_version", "converged", "job_id", "train_split", "svm_c", "file_name")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_VALID_FIELD_NUMBER: _ClassVar[int]
    NUM_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NUM_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_RATIO_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SPLIT_FIELD_NUMBER: _ClassVar[int]
    SVM_C_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.BoundaryRef
    dimension: int
    intercept: float
    validation_accuracy: float
    remaining_accuracy: float
    num_samples: int
    num_valid: int
    num_positive: int
    num_negative: int
    seed: int
    parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.BoundaryRef]
    origin: str
    created_unix: float
    timings: _containers.ScalarMap[str, float]
    chosen_ratio: float
    train_accuracy: float
    solver: str
    dataset: str
    threshold: float
    model_version: str
    converged: bool
    job_id: str
    train_split: float
    svm_c: float
    file_name: str
    def __init__(self, ref: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ..., dimension: _Optional[int] = ..., intercept: _Optional[float] = ..., validation_accuracy: _Optional[float] = ..., remaining_accuracy: _Optional[float] = ..., num_samples: _Optional[int] = ..., num_valid: _Optional[int] = ..., num_positive: _Optional[int] = ..., num_negative: _Optional[int] = ..., seed: _Optional[int] = ..., parents: _Optional[_Iterable[_Union[_common_pb2.BoundaryRef, _Mapping]]] = ..., origin: _Optional[str] = ..., created_unix: _Optional[float] = ..., timings: _Optional[_Mapping[str, float]] = ..., chosen_ratio: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., solver: _Optional[str] = ..., dataset: _Optional[str] = ..., threshold: _Optional[float] = ..., model_version: _Optional[str] = ..., converged: _Optional[bool] = ..., job_id: _Optional[str] = ..., train_split: _Optional[float] = ..., svm_c: _Optional[float] = ..., file_name: _Optional[str] = ...) -> None: ...

class Boundary(_message.Message):
    __slots__ = ("info", "normal")
    INFO_FIELD_NUMBER: _ClassVar[int]
    NORMAL_FIELD_NUMBER: _ClassVar[int]
    info: BoundaryInfo
    normal: _common_pb2.Tensor
    def __init__(self, info: _Optional[_Union[BoundaryInfo, _Mapping]] = ..., normal: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class ListBoundariesRequest(_message.Message):
    __slots__ = ("model", "attribute", "space", "all_versions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    attribute: str
    space: _common_pb2.LatentSpace
    all_versions: bool
    def __init__(self, model: _Optional[str] = ..., attribute: _Optional[str] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., all_versions: _Optional[bool] = ...) -> None: ...

class ListBoundariesResponse(_message.Message):
    __slots__ = ("boundaries",)
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    boundaries: _containers.RepeatedCompositeFieldContainer[BoundaryInfo]
    def __init__(self, boundaries: _Optional[_Iterable[_Union[BoundaryInfo, _Mapping]]] = ...) -> None: ...

class GetBoundaryRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.BoundaryRef
    def __init__(self, ref: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ...) -> None: ...

class ConditionBoundaryRequest(_message.Message):
    __slots__ = ("request_id", "target", "conditions")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    target: _common_pb2.BoundaryRef
    conditions: _containers.RepeatedCompositeFieldContainer[_common_pb2.BoundaryRef]
    def __init__(self, request_id: _Optional[str] = ..., target: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ..., conditions: _Optional[_Iterable[_Union[_common_pb2.BoundaryRef, _Mapping]]] = ...) -> None: ...

class Edit(_message.Message):
    __slots__ = ("boundary", "vector", "mode", "start", "end", "steps", "layer_start", "layer_end")
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    boundary: _common_pb2.BoundaryRef
    vector: _common_pb2.Tensor
    mode: DistanceMode
    start: float
    end: float
    steps: int
    layer_start: int
    layer_end: int
    def __init__(self, boundary: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ..., vector: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mode: _Optional[_Union[DistanceMode, str]] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., steps: _Optional[int] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ...) -> None: ...

class EditLatentsRequest(_message.Message):
    __slots__ = ("codes", "edits")
    CODES_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    codes: _common_pb2.LatentBatch
    edits: _containers.RepeatedCompositeFieldContainer[Edit]
    def __init__(self, codes: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., edits: _Optional[_Iterable[_Union[Edit, _Mapping]]] = ...) -> None: ...

class EditLatentsResponse(_message.Message):
    __slots__ = ("codes", "distances")
    CODES_FIELD_NUMBER: _ClassVar[int]
    DISTANCES_FIELD_NUMBER: _ClassVar[int]
    codes: _common_pb2.LatentBatch
    distances: _common_pb2.Tensor
    def __init__(self, codes: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., distances: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class InterpolateLatentsRequest(_message.Message):
    __slots__ = ("start", "end", "steps")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    start: _common_pb2.LatentBatch
    end: _common_pb2.LatentBatch
    steps: int
    def __init__(self, start: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., end: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., steps: _Optional[int] = ...) -> None: ...

class InterpolateLatentsResponse(_message.Message):
    __slots__ = ("codes",)
    CODES_FIELD_NUMBER: _ClassVar[int]
    codes: _common_pb2.LatentBatch
    def __init__(self, codes: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ...) -> None: ...

class ImportBoundaryRequest(_message.Message):
    __slots__ = ("file_name", "npy", "model", "attribute", "space")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    NPY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    npy: bytes
    model: str
    attribute: str
    space: _common_pb2.LatentSpace
    def __init__(self, file_name: _Optional[str] = ..., npy: _Optional[bytes] = ..., model: _Optional[str] = ..., attribute: _Optional[str] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ...) -> None: ...

class ExportBoundaryRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: _common_pb2.BoundaryRef
    def __init__(self, ref: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ...) -> None: ...

class ExportBoundaryResponse(_message.Message):
    __slots__ = ("file_name", "npy")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    NPY_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    npy: bytes
    def __init__(self, file_name: _Optional[str] = ..., npy: _Optional[bytes] = ...) -> None: ...

class AnalyzeBoundariesRequest(_message.Message):
    __slots__ = ("request_id", "boundaries", "rescore_samples", "rescore_distance", "seed", "rescore_attributes")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    RESCORE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RESCORE_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RESCORE_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    boundaries: _containers.RepeatedCompositeFieldContainer[_common_pb2.BoundaryRef]
    rescore_samples: int
    rescore_distance: float
    seed: int
    rescore_attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., boundaries: _Optional[_Iterable[_Union[_common_pb2.BoundaryRef, _Mapping]]] = ..., rescore_samples: _Optional[int] = ..., rescore_distance: _Optional[float] = ..., seed: _Optional[int] = ..., rescore_attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class AnalyzeBoundariesResponse(_message.Message):
    __slots__ = ("progress", "labels", "cosine", "scored_attributes", "rescore", "cosine_image", "rescore_image", "rescore_stderr", "rescore_counts")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COSINE_FIELD_NUMBER: _ClassVar[int]
    SCORED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    COSINE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESCORE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESCORE_STDERR_FIELD_NUMBER: _ClassVar[int]
    RESCORE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    progress: _common_pb2.Progress
    labels: _containers.RepeatedCompositeFieldContainer[_common_pb2.BoundaryRef]
    cosine: _common_pb2.Tensor
    scored_attributes: _containers.RepeatedScalarFieldContainer[str]
    rescore: _common_pb2.Tensor
    cosine_image: _common_pb2.Image
    rescore_image: _common_pb2.Image
    rescore_stderr: _common_pb2.Tensor
    rescore_counts: _common_pb2.Tensor
    def __init__(self, progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., labels: _Optional[_Iterable[_Union[_common_pb2.BoundaryRef, _Mapping]]] = ..., cosine: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., scored_attributes: _Optional[_Iterable[str]] = ..., rescore: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., cosine_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., rescore_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., rescore_stderr: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., rescore_counts: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...
