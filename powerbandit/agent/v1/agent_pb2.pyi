from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HolderScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLDER_SCOPE_UNSPECIFIED: _ClassVar[HolderScope]
    HOLDER_SCOPE_PARENT: _ClassVar[HolderScope]
HOLDER_SCOPE_UNSPECIFIED: HolderScope
HOLDER_SCOPE_PARENT: HolderScope

class SetPowerLimitRequest(_message.Message):
    __slots__ = ("gpus", "power_limit_w", "lease_s", "lease_id", "holder_scope", "validate_only")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedScalarFieldContainer[str]
    power_limit_w: float
    lease_s: float
    lease_id: str
    holder_scope: HolderScope
    validate_only: bool
    def __init__(self, gpus: _Optional[_Iterable[str]] = ..., power_limit_w: _Optional[float] = ..., lease_s: _Optional[float] = ..., lease_id: _Optional[str] = ..., holder_scope: _Optional[_Union[HolderScope, str]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class SetPowerLimitResponse(_message.Message):
    __slots__ = ("lease", "applied")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    applied: _containers.RepeatedCompositeFieldContainer[AppliedLimit]
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., applied: _Optional[_Iterable[_Union[AppliedLimit, _Mapping]]] = ...) -> None: ...

class AppliedLimit(_message.Message):
    __slots__ = ("uuid", "index", "power_limit_w")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    power_limit_w: float
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., power_limit_w: _Optional[float] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "gpu_uuids", "power_limit_w", "holder_pid", "holder_uid", "expires_unix_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    HOLDER_PID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_UID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    power_limit_w: float
    holder_pid: int
    holder_uid: int
    expires_unix_s: float
    def __init__(self, lease_id: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., power_limit_w: _Optional[float] = ..., holder_pid: _Optional[int] = ..., holder_uid: _Optional[int] = ..., expires_unix_s: _Optional[float] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "lease_s")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    lease_s: float
    def __init__(self, lease_id: _Optional[str] = ..., lease_s: _Optional[float] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class ReleaseLeaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("gpus", "operator_min_w", "operator_max_w", "backend")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_MIN_W_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_MAX_W_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedCompositeFieldContainer[GpuStatus]
    operator_min_w: float
    operator_max_w: float
    backend: str
    def __init__(self, gpus: _Optional[_Iterable[_Union[GpuStatus, _Mapping]]] = ..., operator_min_w: _Optional[float] = ..., operator_max_w: _Optional[float] = ..., backend: _Optional[str] = ...) -> None: ...

class GpuStatus(_message.Message):
    __slots__ = ("uuid", "index", "model", "min_limit_w", "max_limit_w", "default_limit_w", "current_limit_w", "original_limit_w", "holder_pid", "holder_uid", "expires_unix_s", "lease_id", "mig_enabled")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MIN_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    MAX_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    CURRENT_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    HOLDER_PID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_UID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    MIG_ENABLED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    model: str
    min_limit_w: float
    max_limit_w: float
    default_limit_w: float
    current_limit_w: float
    original_limit_w: float
    holder_pid: int
    holder_uid: int
    expires_unix_s: float
    lease_id: str
    mig_enabled: bool
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., model: _Optional[str] = ..., min_limit_w: _Optional[float] = ..., max_limit_w: _Optional[float] = ..., default_limit_w: _Optional[float] = ..., current_limit_w: _Optional[float] = ..., original_limit_w: _Optional[float] = ..., holder_pid: _Optional[int] = ..., holder_uid: _Optional[int] = ..., expires_unix_s: _Optional[float] = ..., lease_id: _Optional[str] = ..., mig_enabled: _Optional[bool] = ...) -> None: ...
