"""The domain model shared by the SDK, the server and the simulator (standard library only).

- :mod:`~powerbandit.domain.spec`: the job spec and its defaults;
- :mod:`~powerbandit.domain.enums`: run states, phases, stop reasons, power-limit control, metric direction;
- :mod:`~powerbandit.domain.cost`: the cost formula;
- :mod:`~powerbandit.domain.profiles`: power profiles;
- :mod:`~powerbandit.domain.runs`: decisions, observations, arm summaries and run groups;
- :mod:`~powerbandit.domain.power_limits`: the candidate power limits of a run;
- :mod:`~powerbandit.domain.savings`: the energy saved against the default configuration.

Nothing here imports protobuf, gRPC or NumPy: :mod:`powerbandit.proto_conversion` maps these types
to and from the messages of ``powerbandit.v1``.
"""

from powerbandit.domain.cost import cost_rate, energy_time_cost, epoch_cost, power_time_cost
from powerbandit.domain.enums import MetricDirection, Phase, PowerLimitControl, RunState, StopReason
from powerbandit.domain.power_limits import DEFAULT_POWER_LIMIT_STEP_W, candidate_power_limits
from powerbandit.domain.profiles import PowerProfile, ProfilePoint, ProfileRecord, stops_profiling
from powerbandit.domain.runs import (
    ArmSummary,
    Decision,
    Observation,
    RunGroup,
    called_off_reason,
    called_off_why,
)
from powerbandit.domain.spec import DEFAULT_BETA, DEFAULT_ETA, DEFAULT_POLICY, MAX_SLOWDOWN, JobSpec

__all__ = [
    "ArmSummary",
    "DEFAULT_BETA",
    "DEFAULT_ETA",
    "DEFAULT_POLICY",
    "DEFAULT_POWER_LIMIT_STEP_W",
    "MAX_SLOWDOWN",
    "Decision",
    "JobSpec",
    "MetricDirection",
    "Observation",
    "Phase",
    "PowerLimitControl",
    "PowerProfile",
    "ProfilePoint",
    "ProfileRecord",
    "RunGroup",
    "RunState",
    "StopReason",
    "called_off_reason",
    "called_off_why",
    "candidate_power_limits",
    "cost_rate",
    "energy_time_cost",
    "epoch_cost",
    "power_time_cost",
    "stops_profiling",
]
