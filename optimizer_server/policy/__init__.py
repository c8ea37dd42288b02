"""Pure bandit policies shared by the server and the simulator (see ``base`` for the contract)."""

from optimizer_server.policy.base import (
    ArmSummary,
    Decision,
    JobSpec,
    Observation,
    Policy,
    ProfilePoint,
    SuggestContext,
    best_power_limit,
    budget_power_limit,
    choose_power_limit,
    decision_rng,
    energy_time_cost,
    epoch_cost,
    profiled_power_limit,
)
from optimizer_server.policy.registry import POLICY_NAMES, PolicyRegistry, default_registry, get_policy

__all__ = [
    "ArmSummary",
    "Decision",
    "JobSpec",
    "Observation",
    "POLICY_NAMES",
    "Policy",
    "PolicyRegistry",
    "ProfilePoint",
    "SuggestContext",
    "best_power_limit",
    "budget_power_limit",
    "choose_power_limit",
    "decision_rng",
    "default_registry",
    "energy_time_cost",
    "epoch_cost",
    "get_policy",
    "profiled_power_limit",
]
