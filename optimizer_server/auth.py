"""Bearer-token authentication with per-token job-id prefix scopes.

Tokens are configured from a file (``--auth-tokens-file`` / ``POWERBANDIT_AUTH_TOKENS_FILE``) or
the ``POWERBANDIT_AUTH_TOKENS`` environment variable, never on the command line. One token per
line (``;`` also separates entries in the variable)::

    # token            job-id prefixes it may use (none, or '*': every job)
    s3cr3t-team-a      team-a/
    s3cr3t-ops         *

Clients send ``authorization: Bearer <token>`` metadata. Tokens are compared in constant time
(every configured token is compared, so timing says nothing about which one was close).
"""

from __future__ import annotations

import contextvars
import hmac
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from optimizer_server.errors import InvalidArgumentError, PermissionDeniedError, UnauthenticatedError


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name (its first 4 characters and a mask) and its prefixes."""

    name: str
    prefixes: tuple[str, ...]  # empty: every job

    def may_use(self, job_id: str) -> bool:
        """Whether this principal may read or change job ``job_id``."""
        return not self.prefixes or any(job_id.startswith(p) for p in self.prefixes)


ANONYMOUS = Principal("anonymous", ())
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


@dataclass(frozen=True)
class _Token:
    secret: bytes
    principal: Principal


class TokenAuth:
    """Checks bearer tokens. With no tokens configured, every caller is the anonymous admin."""

    def __init__(self, entries: Iterable[tuple[str, Sequence[str]]] = ()) -> None:
        self._tokens: list[_Token] = []
        for secret, prefixes in entries:
            if len(secret) < 8:
                raise InvalidArgumentError("auth tokens must be at least 8 characters long")
            scope = () if not prefixes or "*" in prefixes else tuple(prefixes)
            self._tokens.append(_Token(secret.encode(), Principal(f"{secret[:4]}****", scope)))

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._tokens)

    @classmethod
    def parse(cls, text: str) -> TokenAuth:
        """Tokens from the file/variable format of the module docstring."""
        entries = []
        for raw in text.replace(";", "\n").splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                secret, *prefixes = line.split()
                entries.append((secret, prefixes))
        return cls(entries)

    @classmethod
    def from_environment(cls, tokens_file: str | None = None) -> TokenAuth:
        """Tokens from ``tokens_file``, else ``POWERBANDIT_AUTH_TOKENS_FILE``, else ``POWERBANDIT_AUTH_TOKENS``."""
        path = tokens_file or os.environ.get("POWERBANDIT_AUTH_TOKENS_FILE")
        if path:
            try:
                return cls.parse(Path(path).read_text())
            except OSError as exc:
                raise InvalidArgumentError(f"cannot read the auth tokens file {path}: {exc}") from exc
        return cls.parse(os.environ.get("POWERBANDIT_AUTH_TOKENS", ""))

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller of a request with this metadata. Raises ``UnauthenticatedError``."""
        if not self._tokens:
            return ANONYMOUS
        presented = b""
        for key, value in metadata or ():
            if key.lower() == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode()
        if not presented:
            raise UnauthenticatedError(
                "missing credentials: send 'authorization: Bearer <token>' metadata "
                "(the SDK reads the token from POWERBANDIT_TOKEN)"
            )
        match = None
        for token in self._tokens:  # compare with every token: constant time overall
            if hmac.compare_digest(token.secret, presented):
                match = token.principal
        if match is None:
            raise UnauthenticatedError("invalid token")
        return match


def authorize(job_id: str) -> None:
    """Raise ``PermissionDeniedError`` unless the current caller may use ``job_id``."""
    principal = current_principal.get()
    if not principal.may_use(job_id):
        raise PermissionDeniedError(
            f"token {principal.name} may not use job {job_id!r}; it is limited to job ids starting with "
            + ", ".join(repr(p) for p in principal.prefixes)
        )
