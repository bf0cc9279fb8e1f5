from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetStudioInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StudioInfo(_message.Message):
    __slots__ = ("url", "token_required", "max_upload_bytes", "max_upload_pixels", "editor_address")
    URL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_PIXELS_FIELD_NUMBER: _ClassVar[int]
    EDITOR_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    url: str
    token_required: bool
    max_upload_bytes: int
    max_upload_pixels: int
    editor_address: str
    def __init__(self, url: _Optional[str] = ..., token_required: _Optional[bool] = ..., max_upload_bytes: _Optional[int] = ..., max_upload_pixels: _Optional[int] = ..., editor_address: _Optional[str] = ...) -> None: ...
