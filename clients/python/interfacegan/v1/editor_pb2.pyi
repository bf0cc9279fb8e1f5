from interfacegan.v1 import common_pb2 as _common_pb2
from interfacegan.v1 import boundary_pb2 as _boundary_pb2
from interfacegan.v1 import generator_pb2 as _generator_pb2
from interfacegan.v1 import inversion_pb2 as _inversion_pb2
from interfacegan.v1 import scorer_pb2 as _scorer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributeEdit(_message.Message):
    __slots__ = ("attribute", "boundary_version", "mode", "start", "end", "steps", "hold", "layer_start", "layer_end", "delta", "to", "tolerance", "max_distance", "max_rounds", "unit", "hold_auto")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    HOLD_AUTO_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    boundary_version: int
    mode: _boundary_pb2.DistanceMode
    start: float
    end: float
    steps: int
    hold: _containers.RepeatedScalarFieldContainer[str]
    layer_start: int
    layer_end: int
    delta: float
    to: float
    tolerance: float
    max_distance: float
    max_rounds: int
    unit: str
    hold_auto: bool
    def __init__(self, attribute: _Optional[str] = ..., boundary_version: _Optional[int] = ..., mode: _Optional[_Union[_boundary_pb2.DistanceMode, str]] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., steps: _Optional[int] = ..., hold: _Optional[_Iterable[str]] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ..., delta: _Optional[float] = ..., to: _Optional[float] = ..., tolerance: _Optional[float] = ..., max_distance: _Optional[float] = ..., max_rounds: _Optional[int] = ..., unit: _Optional[str] = ..., hold_auto: _Optional[bool] = ...) -> None: ...

class TargetOutcome(_message.Message):
    __slots__ = ("attribute", "unit", "goal", "tolerance", "before", "after", "distance", "met", "rounds", "evaluations", "stop", "message")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MET_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    unit: str
    goal: float
    tolerance: float
    before: float
    after: float
    distance: float
    met: bool
    rounds: int
    evaluations: int
    stop: str
    message: str
    def __init__(self, attribute: _Optional[str] = ..., unit: _Optional[str] = ..., goal: _Optional[float] = ..., tolerance: _Optional[float] = ..., before: _Optional[float] = ..., after: _Optional[float] = ..., distance: _Optional[float] = ..., met: _Optional[bool] = ..., rounds: _Optional[int] = ..., evaluations: _Optional[int] = ..., stop: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class HoldDrift(_message.Message):
    __slots__ = ("attribute", "unit", "threshold", "drift", "held_drift", "held")
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    HELD_DRIFT_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    attribute: str
    unit: str
    threshold: float
    drift: float
    held_drift: float
    held: bool
    def __init__(self, attribute: _Optional[str] = ..., unit: _Optional[str] = ..., threshold: _Optional[float] = ..., drift: _Optional[float] = ..., held_drift: _Optional[float] = ..., held: _Optional[bool] = ...) -> None: ...

class EditReceipt(_message.Message):
    __slots__ = ("model", "variant", "space", "boundary", "parents", "held", "mode", "distance", "layer_start", "layer_end", "scores", "identity_distance", "replay")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LAYER_START_FIELD_NUMBER: _ClassVar[int]
    LAYER_END_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    variant: str
    space: _common_pb2.LatentSpace
    boundary: _common_pb2.BoundaryRef
    parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.BoundaryRef]
    held: _containers.RepeatedScalarFieldContainer[str]
    mode: _boundary_pb2.DistanceMode
    distance: float
    layer_start: int
    layer_end: int
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.AttributeScore]
    identity_distance: float
    replay: EditRequest
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., variant: _Optional[str] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., boundary: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ..., parents: _Optional[_Iterable[_Union[_common_pb2.BoundaryRef, _Mapping]]] = ..., held: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[_boundary_pb2.DistanceMode, str]] = ..., distance: _Optional[float] = ..., layer_start: _Optional[int] = ..., layer_end: _Optional[int] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.AttributeScore, _Mapping]]] = ..., identity_distance: _Optional[float] = ..., replay: _Optional[_Union[EditRequest, _Mapping]] = ...) -> None: ...

class EditRequest(_message.Message):
    __slots__ = ("request_id", "model", "space", "seed", "code", "photo", "edits", "rescore", "format", "blend_into_photo", "inversion_steps", "include_original", "include_face", "face_selection", "face_indices", "skip_tuning", "paste_whole_face", "variant", "change_smoothing")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PHOTO_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BLEND_INTO_PHOTO_FIELD_NUMBER: _ClassVar[int]
    INVERSION_STEPS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FACE_FIELD_NUMBER: _ClassVar[int]
    FACE_SELECTION_FIELD_NUMBER: _ClassVar[int]
    FACE_INDICES_FIELD_NUMBER: _ClassVar[int]
    SKIP_TUNING_FIELD_NUMBER: _ClassVar[int]
    PASTE_WHOLE_FACE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: _common_pb2.ModelRef
    space: _common_pb2.LatentSpace
    seed: int
    code: _common_pb2.LatentBatch
    photo: _common_pb2.Image
    edits: _containers.RepeatedCompositeFieldContainer[AttributeEdit]
    rescore: bool
    format: _common_pb2.ImageFormat
    blend_into_photo: bool
    inversion_steps: int
    include_original: bool
    include_face: bool
    face_selection: _inversion_pb2.FaceSelection
    face_indices: _containers.RepeatedScalarFieldContainer[int]
    skip_tuning: bool
    paste_whole_face: bool
    variant: str
    change_smoothing: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., space: _Optional[_Union[_common_pb2.LatentSpace, str]] = ..., seed: _Optional[int] = ..., code: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., photo: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., edits: _Optional[_Iterable[_Union[AttributeEdit, _Mapping]]] = ..., rescore: _Optional[bool] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., blend_into_photo: _Optional[bool] = ..., inversion_steps: _Optional[int] = ..., include_original: _Optional[bool] = ..., include_face: _Optional[bool] = ..., face_selection: _Optional[_Union[_inversion_pb2.FaceSelection, str]] = ..., face_indices: _Optional[_Iterable[int]] = ..., skip_tuning: _Optional[bool] = ..., paste_whole_face: _Optional[bool] = ..., variant: _Optional[str] = ..., change_smoothing: _Optional[float] = ...) -> None: ...

class EditedFace(_message.Message):
    __slots__ = ("index", "box", "reconstruction_psnr", "identity_distance", "face")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_PSNR_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    index: int
    box: _containers.RepeatedScalarFieldContainer[float]
    reconstruction_psnr: float
    identity_distance: float
    face: _common_pb2.Image
    def __init__(self, index: _Optional[int] = ..., box: _Optional[_Iterable[float]] = ..., reconstruction_psnr: _Optional[float] = ..., identity_distance: _Optional[float] = ..., face: _Optional[_Union[_common_pb2.Image, _Mapping]] = ...) -> None: ...

class EditResponse(_message.Message):
    __slots__ = ("edit_index", "step_index", "distance", "image", "code", "scores", "progress", "boundary", "request_id", "warnings", "inversion_psnr", "face", "identity_distance", "faces", "blend_mode", "variant", "change_smoothing", "target", "holds", "receipt")
    EDIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    INVERSION_PSNR_FIELD_NUMBER: _ClassVar[int]
    FACE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    BLEND_MODE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    edit_index: int
    step_index: int
    distance: float
    image: _common_pb2.Image
    code: _common_pb2.LatentBatch
    scores: _containers.RepeatedCompositeFieldContainer[_common_pb2.AttributeScore]
    progress: _common_pb2.Progress
    boundary: _common_pb2.BoundaryRef
    request_id: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    inversion_psnr: float
    face: _common_pb2.Image
    identity_distance: float
    faces: _containers.RepeatedCompositeFieldContainer[EditedFace]
    blend_mode: str
    variant: str
    change_smoothing: float
    target: TargetOutcome
    holds: _containers.RepeatedCompositeFieldContainer[HoldDrift]
    receipt: EditReceipt
    def __init__(self, edit_index: _Optional[int] = ..., step_index: _Optional[int] = ..., distance: _Optional[float] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.LatentBatch, _Mapping]] = ..., scores: _Optional[_Iterable[_Union[_common_pb2.AttributeScore, _Mapping]]] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., boundary: _Optional[_Union[_common_pb2.BoundaryRef, _Mapping]] = ..., request_id: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., inversion_psnr: _Optional[float] = ..., face: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., identity_distance: _Optional[float] = ..., faces: _Optional[_Iterable[_Union[EditedFace, _Mapping]]] = ..., blend_mode: _Optional[str] = ..., variant: _Optional[str] = ..., change_smoothing: _Optional[float] = ..., target: _Optional[_Union[TargetOutcome, _Mapping]] = ..., holds: _Optional[_Iterable[_Union[HoldDrift, _Mapping]]] = ..., receipt: _Optional[_Union[EditReceipt, _Mapping]] = ...) -> None: ...

class GetCatalogRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Catalog(_message.Message):
    __slots__ = ("models", "attributes", "boundaries", "invertible_models", "warnings")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    BOUNDARIES_FIELD_NUMBER: _ClassVar[int]
    INVERTIBLE_MODELS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_generator_pb2.ModelInfo]
    attributes: _containers.RepeatedCompositeFieldContainer[_scorer_pb2.AttributeInfo]
    boundaries: _containers.RepeatedCompositeFieldContainer[_boundary_pb2.BoundaryInfo]
    invertible_models: _containers.RepeatedCompositeFieldContainer[_inversion_pb2.InvertibleModel]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, models: _Optional[_Iterable[_Union[_generator_pb2.ModelInfo, _Mapping]]] = ..., attributes: _Optional[_Iterable[_Union[_scorer_pb2.AttributeInfo, _Mapping]]] = ..., boundaries: _Optional[_Iterable[_Union[_boundary_pb2.BoundaryInfo, _Mapping]]] = ..., invertible_models: _Optional[_Iterable[_Union[_inversion_pb2.InvertibleModel, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
