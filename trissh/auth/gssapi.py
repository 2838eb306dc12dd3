"""Kerberos for ``gssapi-with-mic``: the keytab, one GSS-API context per attempt, and which
principal may log in as which user.

The binding is python-gssapi over the system's MIT krb5 (the ``kerberos`` extra); it is
imported only when ``[auth.kerberos]`` is set, so trissh runs without it otherwise. The
acceptor credentials are acquired when the configuration loads, so a missing keytab or a
service principal it lacks stops the start (or a reload) with the library's own reason.
The keytab itself is read again by every context: a rotated key needs no reload.

GSS-API calls block (keytab reads, the replay cache), so they run in worker threads, one
at a time per context. Everything a client sends has been bounded by the core already.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from trissh.config import KerberosSection
from trissh.protocol.messages.gssapi import KRB5_MECHANISM

if TYPE_CHECKING:
    import gssapi


class KerberosError(Exception):
    """``[auth.kerberos]`` cannot be used; the message says why."""


class GssFailure(Exception):
    """A context step failed: ``reason`` for the log, ``token`` for the client's GSS-API."""

    def __init__(self, reason: str, token: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.token = token


def _import() -> Any:
    try:
        import gssapi
    except ImportError as exc:
        raise KerberosError(
            f"[auth.kerberos] needs python-gssapi ({exc}): pip install 'trissh[kerberos]'"
        ) from None
    return gssapi


def describe(exc: Exception) -> str:
    """A GSS-API error as one line: the mechanism's reason if it has one, else the major."""
    minor = getattr(exc, "min_code", 0)
    try:
        if minor:
            return "; ".join(exc.get_all_statuses(minor, False))  # type: ignore[attr-defined]
        return "; ".join(exc.get_all_statuses(exc.maj_code, True))  # type: ignore[attr-defined]
    except Exception:
        return str(exc)


class Kerberos:
    """The configured acceptor: which mechanism it speaks, whom it lets in as whom."""

    def __init__(self, section: KerberosSection) -> None:
        """Raises:
        KerberosError: python-gssapi is missing, or the keytab cannot serve the principal.
        """
        self._gssapi = _import()
        self.section = section
        keytab = str(section.keytab)
        name = None
        if section.service_principal:
            name = self._gssapi.Name(
                section.service_principal, self._gssapi.NameType.kerberos_principal
            )
        try:
            self._credentials = self._gssapi.Credentials(
                name=name, usage="accept", store={"keytab": keytab}
            )
        except self._gssapi.exceptions.GSSError as exc:
            raise KerberosError(f"auth.kerberos.keytab {keytab}: {describe(exc)}") from None
        self._realms = frozenset(section.realms)
        self._principals: Mapping[str, Sequence[str]] = section.principals

    def choose(self, offered: Sequence[bytes]) -> bytes | None:
        """The mechanism to use of those the client offered (Kerberos V5 is the one)."""
        return KRB5_MECHANISM if KRB5_MECHANISM in offered else None

    def exchange(self) -> GssExchange:
        return GssExchange(self._gssapi, self._credentials)

    def may_log_in(self, principal: str, username: str) -> bool:
        """sshd's default rule for the configured realms (``NAME@REALM`` is NAME), then the
        explicit map."""
        if username in self._principals.get(principal, ()):
            return True
        name, _, realm = principal.rpartition("@")
        return realm in self._realms and name == username and "/" not in name


class GssExchange:
    """One accepting GSS-API context: tokens in, then the MIC, the principal and what it
    delegated. The raw API: the high-level ``SecurityContext.step`` returns an error token
    as if it were output and raises only at the next call."""

    def __init__(self, module: Any, credentials: gssapi.Credentials) -> None:
        self._gssapi = module
        self._credentials = credentials
        self._context: Any = None
        self._delegated: Any = None
        self.principal: str | None = None

    async def step(self, token: bytes) -> tuple[bytes | None, bool]:
        """The output token and whether the context is established.

        Raises:
            GssFailure: the token was refused (with the error token, if any).
        """
        result = await trio.to_thread.run_sync(self._accept, token)
        self._context = result.context
        if result.more_steps:
            return result.token, False
        self.principal = str(self._gssapi.Name(base=result.initiator_name))
        self._delegated = result.delegated_creds
        return result.token, True

    def _accept(self, token: bytes) -> Any:
        """In the worker thread: MIT keeps a failure's details per thread, for
        ``describe`` to find there."""
        raw = self._gssapi.raw
        try:
            return raw.accept_sec_context(token, self._credentials, self._context)
        except raw.GSSError as exc:
            raise GssFailure(f"GSS-API: {describe(exc)}", exc.token or b"") from None

    async def verify_mic(self, data: bytes, mic: bytes) -> bool:
        """Whether ``mic`` is the established context's MIC over ``data``."""
        if self.principal is None:
            return False
        raw = self._gssapi.raw
        try:
            await trio.to_thread.run_sync(raw.verify_mic, self._context, data, mic)
        except raw.GSSError:
            return False
        return True

    async def delegated_ccache(self) -> bytes | None:
        """The credentials the client delegated, as the bytes of a ccache file; ``None``
        when it delegated none."""
        if self._delegated is None:
            return None
        credentials = self._gssapi.Credentials(base=self._delegated)
        return await trio.to_thread.run_sync(_ccache_bytes, credentials)


def _ccache_bytes(credentials: gssapi.Credentials) -> bytes:
    """Store ``credentials`` in a FILE ccache of a private temporary directory, read it
    back, and remove it: the only way krb5 hands out a ccache's bytes."""
    directory = tempfile.mkdtemp(prefix="trissh-ccache-")
    try:
        path = os.path.join(directory, "ccache")
        credentials.store(store={"ccache": f"FILE:{path}"}, overwrite=True)
        with open(path, "rb") as file:
            return file.read()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
