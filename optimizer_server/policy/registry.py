"""The policies a service can run, by name: a registry object handed to whoever needs policies.

The service, validation and the simulator do not look policies up in a module-level table: they
are given a :class:`PolicyRegistry` (as OSS Vizier's Pythia service is given its policy factory).
:func:`default_registry` builds the one every server and simulation uses unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from optimizer_server.policy.base import Policy
from optimizer_server.policy.powerbandit import PowerBanditPolicy
from optimizer_server.policy.zeus import ZeusPolicy


class PolicyRegistry:
    """Policies by name; the first one is the default for jobs that name none."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self._by_name: dict[str, Policy] = {}
        for policy in policies:
            if policy.name in self._by_name:
                raise ValueError(f"two policies are called {policy.name!r}")
            self._by_name[policy.name] = policy
        if not self._by_name:
            raise ValueError("a policy registry needs at least one policy")

    @property
    def names(self) -> tuple[str, ...]:
        """Every policy name, the default first."""
        return tuple(self._by_name)

    @property
    def default_name(self) -> str:
        """The policy of a job that names none."""
        return next(iter(self._by_name))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Policy:
        """The policy called ``name``; raises ``KeyError`` naming the known policies otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown policy {name!r}; known policies: {', '.join(self.names)}") from None


_DEFAULT_REGISTRY = PolicyRegistry((PowerBanditPolicy(), ZeusPolicy()))


def default_registry() -> PolicyRegistry:
    """The built-in policies, ``powerbandit`` (the default) and ``zeus``. Policies keep no state of
    their own, so every caller shares the same registry."""
    return _DEFAULT_REGISTRY


POLICY_NAMES: tuple[str, ...] = default_registry().names
"""The default registry's names, the default (``powerbandit``) first (for command-line choices)."""


def get_policy(name: str) -> Policy:
    """The default registry's policy ``name`` (the in-process simulator's view of it)."""
    return default_registry().get(name)
