"""Bearer-token authentication with per-token job-id prefix scopes.

Tokens are configured from a file (``--auth-tokens-file`` / ``POWERBANDIT_AUTH_TOKENS_FILE``) or
the ``POWERBANDIT_AUTH_TOKENS`` environment variable, never on the command line. Each entry is a
token followed by the job-id prefixes it may use, separated by spaces; ``*`` alone means every
job. Every entry must say its scope: an entry with no prefixes is refused. In a file, one entry
per line and ``#`` starts a comment::

    # token            job-id prefixes it may use ('*': every job)
    s3cr3t-team-a      team-a/
    s3cr3t-ops         *

In the environment variable, entries are separated by ``;`` (or newlines), as in
``POWERBANDIT_AUTH_TOKENS="s3cr3t-team-a team-a/; s3cr3t-ops *"``.

Tokens use the bearer-token alphabet of RFC 6750 (letters, digits and ``-._~+/``, then ``=``
padding), at least 8 characters. Anything that could be read two ways is refused when the server
starts, naming its line: a ``;`` in a file, a character outside that alphabet, ``*`` mixed with
prefixes, a token listed twice.

Clients send ``authorization: Bearer <token>`` metadata. Tokens are compared in constant time
(every configured token is compared, so timing says nothing about which one was close).
"""

from __future__ import annotations

import contextvars
import hmac
import os
import re
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


_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 b64token
MIN_TOKEN_LENGTH = 8


def _entry(line: str, where: str) -> tuple[str, tuple[str, ...]]:
    """``(token, prefixes)`` of one entry; ``()`` for ``*``. Raises ``InvalidArgumentError``."""
    secret, *prefixes = line.split()
    if not _TOKEN.fullmatch(secret):
        bad = sorted({ch for ch in secret if not _TOKEN.fullmatch(ch) and ch != "="})
        raise InvalidArgumentError(
            f"{where}: the token contains {', '.join(repr(ch) for ch in bad) or 'misplaced ='}; tokens use "
            "letters, digits and -._~+/ (then = padding)"
        )
    if len(secret) < MIN_TOKEN_LENGTH:
        raise InvalidArgumentError(f"{where}: auth tokens must be at least {MIN_TOKEN_LENGTH} characters long")
    if not prefixes:
        raise InvalidArgumentError(
            f"{where}: token {secret[:4]}**** lists no job-id prefixes; add the prefixes it may use "
            "(e.g. team-a/), or '*' for every job"
        )
    if "*" in prefixes and len(prefixes) > 1:
        raise InvalidArgumentError(
            f"{where}: token {secret[:4]}**** mixes '*' (every job) with prefixes; give one or the other"
        )
    return secret, (() if prefixes == ["*"] else tuple(prefixes))


@dataclass(frozen=True)
class _Token:
    secret: bytes
    principal: Principal


class TokenAuth:
    """Checks bearer tokens. With no tokens configured, every caller is the anonymous admin."""

    def __init__(self, entries: Iterable[tuple[str, Sequence[str]]] = ()) -> None:
        self._tokens: list[_Token] = []
        for secret, prefixes in entries:
            if len(secret) < MIN_TOKEN_LENGTH:
                raise InvalidArgumentError(f"auth tokens must be at least {MIN_TOKEN_LENGTH} characters long")
            scope = () if not prefixes or "*" in prefixes else tuple(prefixes)
            self._tokens.append(_Token(secret.encode(), Principal(f"{secret[:4]}****", scope)))

    @property
    def enabled(self) -> bool:
        """True when at least one token is configured."""
        return bool(self._tokens)

    @classmethod
    def parse(cls, text: str, source: str = "the auth tokens file") -> TokenAuth:
        """Tokens from a file's text: one entry per line (see the module docstring)."""
        entries = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}, line {number}"
            if ";" in line:
                raise InvalidArgumentError(
                    f"{where}: ';' does not separate tokens in a file (only in POWERBANDIT_AUTH_TOKENS); "
                    "put one token and its prefixes per line"
                )
            entries.append((where, *_entry(line, where)))
        return cls._checked(entries)

    @classmethod
    def parse_variable(cls, text: str, source: str = "POWERBANDIT_AUTH_TOKENS") -> TokenAuth:
        """Tokens from the environment variable: entries separated by ``;`` or newlines."""
        entries = []
        for number, raw in enumerate(text.replace("\n", ";").split(";"), start=1):
            line = raw.strip()
            if line:
                where = f"{source}, entry {number}"
                entries.append((where, *_entry(line, where)))
        return cls._checked(entries)

    @classmethod
    def _checked(cls, entries: Sequence[tuple[str, str, tuple[str, ...]]]) -> TokenAuth:
        first_seen: dict[str, str] = {}
        for where, secret, _ in entries:
            if secret in first_seen:
                raise InvalidArgumentError(
                    f"{where}: token {secret[:4]}**** is already listed at {first_seen[secret]}; "
                    "list each token once, with all its prefixes"
                )
            first_seen[secret] = where
        return cls((secret, prefixes) for _, secret, prefixes in entries)

    @classmethod
    def from_environment(cls, tokens_file: str | None = None) -> TokenAuth:
        """Tokens from ``tokens_file``, else ``POWERBANDIT_AUTH_TOKENS_FILE``, else ``POWERBANDIT_AUTH_TOKENS``.

        One source only: a file and the variable both set is refused (one would be ignored), and so
        is a file that lists no token (authentication would silently be off).
        """
        path = tokens_file or os.environ.get("POWERBANDIT_AUTH_TOKENS_FILE")
        variable = os.environ.get("POWERBANDIT_AUTH_TOKENS", "")
        if path:
            if variable.strip():
                raise InvalidArgumentError(
                    f"tokens come from the file {path} and from POWERBANDIT_AUTH_TOKENS; use one source "
                    "(unset the variable, or drop the file)"
                )
            try:
                text = Path(path).read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidArgumentError(f"cannot read the auth tokens file {path}: {exc}") from exc
            auth = cls.parse(text, source=f"auth tokens file {path}")
            if not auth.enabled:
                raise InvalidArgumentError(
                    f"the auth tokens file {path} lists no token; add 'TOKEN PREFIX...' lines (see "
                    "`powerbandit serve --help`), or give no tokens file to run without authentication"
                )
            return auth
        return cls.parse_variable(variable)

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
