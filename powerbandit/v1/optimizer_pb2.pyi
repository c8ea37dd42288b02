from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_DIRECTION_UNSPECIFIED: _ClassVar[MetricDirection]
    METRIC_DIRECTION_HIGHER_IS_BETTER: _ClassVar[MetricDirection]
    METRIC_DIRECTION_LOWER_IS_BETTER: _ClassVar[MetricDirection]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_EXPLORE: _ClassVar[Phase]
    PHASE_EXPLOIT: _ClassVar[Phase]
    PHASE_FALLBACK: _ClassVar[Phase]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_TARGET_REACHED: _ClassVar[StopReason]
    STOP_REASON_COST_BOUND: _ClassVar[StopReason]
    STOP_REASON_MAX_EPOCHS: _ClassVar[StopReason]
    STOP_REASON_EXPLORATION_CALLED_OFF: _ClassVar[StopReason]

class PowerLimitControl(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_LIMIT_CONTROL_UNSPECIFIED: _ClassVar[PowerLimitControl]
    POWER_LIMIT_CONTROL_NVML: _ClassVar[PowerLimitControl]
    POWER_LIMIT_CONTROL_AGENT: _ClassVar[PowerLimitControl]
    POWER_LIMIT_CONTROL_NONE: _ClassVar[PowerLimitControl]
    POWER_LIMIT_CONTROL_SIMULATED: _ClassVar[PowerLimitControl]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_IN_FLIGHT: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_EXPIRED: _ClassVar[RunState]
METRIC_DIRECTION_UNSPECIFIED: MetricDirection
METRIC_DIRECTION_HIGHER_IS_BETTER: MetricDirection
METRIC_DIRECTION_LOWER_IS_BETTER: MetricDirection
PHASE_UNSPECIFIED: Phase
PHASE_EXPLORE: Phase
PHASE_EXPLOIT: Phase
PHASE_FALLBACK: Phase
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_TARGET_REACHED: StopReason
STOP_REASON_COST_BOUND: StopReason
STOP_REASON_MAX_EPOCHS: StopReason
STOP_REASON_EXPLORATION_CALLED_OFF: StopReason
POWER_LIMIT_CONTROL_UNSPECIFIED: PowerLimitControl
POWER_LIMIT_CONTROL_NVML: PowerLimitControl
POWER_LIMIT_CONTROL_AGENT: PowerLimitControl
POWER_LIMIT_CONTROL_NONE: PowerLimitControl
POWER_LIMIT_CONTROL_SIMULATED: PowerLimitControl
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_IN_FLIGHT: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_EXPIRED: RunState

class JobSpec(_message.Message):
    __slots__ = ("job_id", "batch_sizes", "default_batch_size", "target_metric", "metric_direction", "max_epochs", "eta", "beta", "policy", "window", "seed", "max_slowdown")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_METRIC_FIELD_NUMBER: _ClassVar[int]
    METRIC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOWDOWN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    default_batch_size: int
    target_metric: float
    metric_direction: MetricDirection
    max_epochs: int
    eta: float
    beta: float
    policy: str
    window: int
    seed: int
    max_slowdown: float
    def __init__(self, job_id: _Optional[str] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., default_batch_size: _Optional[int] = ..., target_metric: _Optional[float] = ..., metric_direction: _Optional[_Union[MetricDirection, str]] = ..., max_epochs: _Optional[int] = ..., eta: _Optional[float] = ..., beta: _Optional[float] = ..., policy: _Optional[str] = ..., window: _Optional[int] = ..., seed: _Optional[int] = ..., max_slowdown: _Optional[float] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("model", "count", "min_power_limit_w", "max_power_limit_w", "power_limits_w")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    MAX_POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMITS_W_FIELD_NUMBER: _ClassVar[int]
    model: str
    count: int
    min_power_limit_w: float
    max_power_limit_w: float
    power_limits_w: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., count: _Optional[int] = ..., min_power_limit_w: _Optional[float] = ..., max_power_limit_w: _Optional[float] = ..., power_limits_w: _Optional[_Iterable[float]] = ...) -> None: ...

class RegisterJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ...) -> None: ...

class RegisterJobResponse(_message.Message):
    __slots__ = ("spec", "created")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    created: bool
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SuggestRequest(_message.Message):
    __slots__ = ("job_id", "gpu", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    gpu: GpuInfo
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., gpu: _Optional[_Union[GpuInfo, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SuggestResponse(_message.Message):
    __slots__ = ("run_id", "batch_size", "power_limit_w", "profile_power_limits_w", "phase", "explanation", "max_cost", "max_epochs", "lease_s", "max_power_w", "eta", "profile_stop_ratio")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    PROFILE_POWER_LIMITS_W_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    MAX_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    PROFILE_STOP_RATIO_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    batch_size: int
    power_limit_w: float
    profile_power_limits_w: _containers.RepeatedScalarFieldContainer[float]
    phase: Phase
    explanation: str
    max_cost: float
    max_epochs: int
    lease_s: float
    max_power_w: float
    eta: float
    profile_stop_ratio: float
    def __init__(self, run_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., power_limit_w: _Optional[float] = ..., profile_power_limits_w: _Optional[_Iterable[float]] = ..., phase: _Optional[_Union[Phase, str]] = ..., explanation: _Optional[str] = ..., max_cost: _Optional[float] = ..., max_epochs: _Optional[int] = ..., lease_s: _Optional[float] = ..., max_power_w: _Optional[float] = ..., eta: _Optional[float] = ..., profile_stop_ratio: _Optional[float] = ...) -> None: ...

class ProfileMeasurement(_message.Message):
    __slots__ = ("power_limit_w", "average_power_w", "time_per_step_s")
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    TIME_PER_STEP_S_FIELD_NUMBER: _ClassVar[int]
    power_limit_w: float
    average_power_w: float
    time_per_step_s: float
    def __init__(self, power_limit_w: _Optional[float] = ..., average_power_w: _Optional[float] = ..., time_per_step_s: _Optional[float] = ...) -> None: ...

class ReportProfileRequest(_message.Message):
    __slots__ = ("job_id", "run_id", "steps_per_epoch", "measurements")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    steps_per_epoch: float
    measurements: _containers.RepeatedCompositeFieldContainer[ProfileMeasurement]
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ..., steps_per_epoch: _Optional[float] = ..., measurements: _Optional[_Iterable[_Union[ProfileMeasurement, _Mapping]]] = ...) -> None: ...

class ReportProfileResponse(_message.Message):
    __slots__ = ("power_limit_w", "epoch_cost")
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    EPOCH_COST_FIELD_NUMBER: _ClassVar[int]
    power_limit_w: float
    epoch_cost: float
    def __init__(self, power_limit_w: _Optional[float] = ..., epoch_cost: _Optional[float] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "run_id", "epochs", "energy_j", "time_s", "metric")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    epochs: float
    energy_j: float
    time_s: float
    metric: float
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ..., epochs: _Optional[float] = ..., energy_j: _Optional[float] = ..., time_s: _Optional[float] = ..., metric: _Optional[float] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("stop", "reason", "message", "cost", "max_cost")
    STOP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    stop: bool
    reason: StopReason
    message: str
    cost: float
    max_cost: float
    def __init__(self, stop: _Optional[bool] = ..., reason: _Optional[_Union[StopReason, str]] = ..., message: _Optional[str] = ..., cost: _Optional[float] = ..., max_cost: _Optional[float] = ...) -> None: ...

class CompleteRunRequest(_message.Message):
    __slots__ = ("job_id", "run_id", "energy_j", "time_s", "epochs", "reached_target", "final_metric", "power_limit_w", "power_limit_control")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    REACHED_TARGET_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRIC_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_CONTROL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    energy_j: float
    time_s: float
    epochs: float
    reached_target: bool
    final_metric: float
    power_limit_w: float
    power_limit_control: PowerLimitControl
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ..., energy_j: _Optional[float] = ..., time_s: _Optional[float] = ..., epochs: _Optional[float] = ..., reached_target: _Optional[bool] = ..., final_metric: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., power_limit_control: _Optional[_Union[PowerLimitControl, str]] = ...) -> None: ...

class CompleteRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class FailRunRequest(_message.Message):
    __slots__ = ("job_id", "run_id", "reason", "energy_j", "time_s", "epochs", "power_limit_control", "power_limit_w")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_CONTROL_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    reason: str
    energy_j: float
    time_s: float
    epochs: float
    power_limit_control: PowerLimitControl
    power_limit_w: float
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ..., reason: _Optional[str] = ..., energy_j: _Optional[float] = ..., time_s: _Optional[float] = ..., epochs: _Optional[float] = ..., power_limit_control: _Optional[_Union[PowerLimitControl, str]] = ..., power_limit_w: _Optional[float] = ...) -> None: ...

class FailRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id", "run_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    run_id: str
    def __init__(self, job_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_expires_unix_s",)
    LEASE_EXPIRES_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    lease_expires_unix_s: float
    def __init__(self, lease_expires_unix_s: _Optional[float] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id", "max_runs", "page_token", "window_start_unix_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    max_runs: int
    page_token: str
    window_start_unix_s: float
    def __init__(self, job_id: _Optional[str] = ..., max_runs: _Optional[int] = ..., page_token: _Optional[str] = ..., window_start_unix_s: _Optional[float] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "next_page_token")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job: Job
    next_page_token: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("job_id_prefix", "page_size", "page_token", "window_start_unix_s")
    JOB_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    job_id_prefix: str
    page_size: int
    page_token: str
    window_start_unix_s: float
    def __init__(self, job_id_prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., window_start_unix_s: _Optional[float] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "job_id", "state", "batch_size", "power_limit_w", "gpu_model", "gpu_count", "energy_j", "time_s", "epochs", "reached_target", "cost", "phase", "created_unix_s", "finished_unix_s", "reason", "max_power_w", "profiled", "power_limit_control")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    REACHED_TARGET_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    PROFILED_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_CONTROL_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    job_id: str
    state: RunState
    batch_size: int
    power_limit_w: float
    gpu_model: str
    gpu_count: int
    energy_j: float
    time_s: float
    epochs: float
    reached_target: bool
    cost: float
    phase: Phase
    created_unix_s: float
    finished_unix_s: float
    reason: str
    max_power_w: float
    profiled: bool
    power_limit_control: PowerLimitControl
    def __init__(self, run_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., batch_size: _Optional[int] = ..., power_limit_w: _Optional[float] = ..., gpu_model: _Optional[str] = ..., gpu_count: _Optional[int] = ..., energy_j: _Optional[float] = ..., time_s: _Optional[float] = ..., epochs: _Optional[float] = ..., reached_target: _Optional[bool] = ..., cost: _Optional[float] = ..., phase: _Optional[_Union[Phase, str]] = ..., created_unix_s: _Optional[float] = ..., finished_unix_s: _Optional[float] = ..., reason: _Optional[str] = ..., max_power_w: _Optional[float] = ..., profiled: _Optional[bool] = ..., power_limit_control: _Optional[_Union[PowerLimitControl, str]] = ...) -> None: ...

class Arm(_message.Message):
    __slots__ = ("batch_size", "status", "observations", "successes", "cost_mean", "cost_low", "cost_high", "epochs_mean")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    COST_MEAN_FIELD_NUMBER: _ClassVar[int]
    COST_LOW_FIELD_NUMBER: _ClassVar[int]
    COST_HIGH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_MEAN_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    status: str
    observations: int
    successes: int
    cost_mean: float
    cost_low: float
    cost_high: float
    epochs_mean: float
    def __init__(self, batch_size: _Optional[int] = ..., status: _Optional[str] = ..., observations: _Optional[int] = ..., successes: _Optional[int] = ..., cost_mean: _Optional[float] = ..., cost_low: _Optional[float] = ..., cost_high: _Optional[float] = ..., epochs_mean: _Optional[float] = ...) -> None: ...

class PowerProfile(_message.Message):
    __slots__ = ("gpu_model", "batch_size", "points")
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    gpu_model: str
    batch_size: int
    points: _containers.RepeatedCompositeFieldContainer[ProfilePoint]
    def __init__(self, gpu_model: _Optional[str] = ..., batch_size: _Optional[int] = ..., points: _Optional[_Iterable[_Union[ProfilePoint, _Mapping]]] = ...) -> None: ...

class ProfilePoint(_message.Message):
    __slots__ = ("power_limit_w", "average_power_w", "time_per_epoch_s")
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    TIME_PER_EPOCH_S_FIELD_NUMBER: _ClassVar[int]
    power_limit_w: float
    average_power_w: float
    time_per_epoch_s: float
    def __init__(self, power_limit_w: _Optional[float] = ..., average_power_w: _Optional[float] = ..., time_per_epoch_s: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("spec", "arms", "best_batch_size", "best_power_limit_w", "runs", "profiles", "completed_runs", "in_flight_runs", "failed_runs", "created_unix_s", "max_cost", "outlook", "run_groups", "run_groups_window_start_unix_s")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    BEST_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEST_POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_RUNS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_RUNS_FIELD_NUMBER: _ClassVar[int]
    FAILED_RUNS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    MAX_COST_FIELD_NUMBER: _ClassVar[int]
    OUTLOOK_FIELD_NUMBER: _ClassVar[int]
    RUN_GROUPS_FIELD_NUMBER: _ClassVar[int]
    RUN_GROUPS_WINDOW_START_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    best_batch_size: int
    best_power_limit_w: float
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    profiles: _containers.RepeatedCompositeFieldContainer[PowerProfile]
    completed_runs: int
    in_flight_runs: int
    failed_runs: int
    created_unix_s: float
    max_cost: float
    outlook: str
    run_groups: _containers.RepeatedCompositeFieldContainer[RunGroup]
    run_groups_window_start_unix_s: float
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., best_batch_size: _Optional[int] = ..., best_power_limit_w: _Optional[float] = ..., runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., profiles: _Optional[_Iterable[_Union[PowerProfile, _Mapping]]] = ..., completed_runs: _Optional[int] = ..., in_flight_runs: _Optional[int] = ..., failed_runs: _Optional[int] = ..., created_unix_s: _Optional[float] = ..., max_cost: _Optional[float] = ..., outlook: _Optional[str] = ..., run_groups: _Optional[_Iterable[_Union[RunGroup, _Mapping]]] = ..., run_groups_window_start_unix_s: _Optional[float] = ...) -> None: ...

class RunGroup(_message.Message):
    __slots__ = ("gpu_model", "batch_size", "power_limit_w", "state", "reached_target", "in_window", "runs", "energy_j", "time_s", "epochs", "max_power_limit_w", "last_created_unix_s")
    GPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REACHED_TARGET_FIELD_NUMBER: _ClassVar[int]
    IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    LAST_CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    gpu_model: str
    batch_size: int
    power_limit_w: float
    state: RunState
    reached_target: bool
    in_window: bool
    runs: int
    energy_j: float
    time_s: float
    epochs: float
    max_power_limit_w: float
    last_created_unix_s: float
    def __init__(self, gpu_model: _Optional[str] = ..., batch_size: _Optional[int] = ..., power_limit_w: _Optional[float] = ..., state: _Optional[_Union[RunState, str]] = ..., reached_target: _Optional[bool] = ..., in_window: _Optional[bool] = ..., runs: _Optional[int] = ..., energy_j: _Optional[float] = ..., time_s: _Optional[float] = ..., epochs: _Optional[float] = ..., max_power_limit_w: _Optional[float] = ..., last_created_unix_s: _Optional[float] = ...) -> None: ...
