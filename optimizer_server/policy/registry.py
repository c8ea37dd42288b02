"""Policies by name: the one place that knows which algorithms exist."""

from __future__ import annotations

from optimizer_server.policy.base import Policy
from optimizer_server.policy.powerbandit import PowerBanditPolicy
from optimizer_server.policy.zeus import ZeusPolicy

_POLICIES: dict[str, Policy] = {
    "powerbandit": PowerBanditPolicy(),
    "zeus": ZeusPolicy(),
}

POLICY_NAMES: tuple[str, ...] = tuple(_POLICIES)
"""Names accepted by :func:`get_policy`, the default (``powerbandit``) first."""


def get_policy(name: str) -> Policy:
    """The policy called ``name``; raises ``KeyError`` naming the known policies otherwise."""
    try:
        return _POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known policies: {', '.join(POLICY_NAMES)}") from None
