"""The ``ssh-userauth`` service (RFC 4252), server side.

Requests are handled one at a time, in order: while a decision is pending the façade
stops parsing, so pipelined requests wait in the receive buffer (RFC 4252 §5 allows
pipelining; the order of answers must match). Whether a key may log in is the driver's
decision; the signature check is ours and happens only after the driver said yes, so
unknown keys never cost a signature verification.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from trissh.protocol.config import ProtocolConfig
from trissh.protocol.constants import DisconnectReason, MessageNumber
from trissh.protocol.errors import (
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    TooManyAuthAttempts,
    UnexpectedMessage,
)
from trissh.protocol.events import (
    Authenticated,
    AuthFailed,
    Event,
    PublicKeyAuthRequested,
)
from trissh.protocol.keys import USER_SIGNATURE_ALGORITHMS, PublicKey, parse_public_key
from trissh.protocol.messages.userauth import (
    PublicKeyMethod,
    UserauthFailure,
    UserauthPkOk,
    UserauthRequest,
    UserauthSuccess,
    publickey_signed_data,
)
from trissh.protocol.wire import Reader

CONNECTION_SERVICE = "ssh-connection"


class AuthState(enum.Enum):
    AWAITING_REQUEST = "awaiting_request"
    DECISION_PENDING = "decision_pending"
    AUTHENTICATED = "authenticated"


@dataclass(frozen=True, slots=True)
class _PendingPublicKey:
    request: UserauthRequest
    method: PublicKeyMethod
    key: PublicKey


class UserAuthServer:
    """Decides nothing itself: asks the driver, verifies proofs, counts failures."""

    def __init__(
        self,
        config: ProtocolConfig,
        send: Callable[[bytes], None],
        emit: Callable[[Event], None],
        session_id: Callable[[], bytes],
    ) -> None:
        self._config = config
        self._send = send
        self._emit = emit
        self._session_id = session_id
        self.state = AuthState.AWAITING_REQUEST
        self.failures = 0
        self._requests = 0
        self._pending: _PendingPublicKey | None = None
        self.username: str | None = None

    @property
    def decision_pending(self) -> bool:
        return self.state is AuthState.DECISION_PENDING

    def check_limit(self) -> None:
        """Raise once the client has used up its attempts (the façade disconnects)."""
        if self.failures >= self._config.max_auth_attempts:
            raise TooManyAuthAttempts("too many authentication failures")

    def handle(self, payload: bytes) -> None:
        if self.state is AuthState.AUTHENTICATED:
            return  # RFC 4252 §5.1: requests after success are ignored
        if payload[0] != MessageNumber.USERAUTH_REQUEST:
            raise UnexpectedMessage(f"message {payload[0]} is not a client userauth message")
        request = UserauthRequest.decode(Reader(payload, 1))
        if request.service != CONNECTION_SERVICE:
            raise RemoteProtocolError(
                f"service {request.service!r} not available", DisconnectReason.SERVICE_NOT_AVAILABLE
            )
        self._requests += 1
        if request.method == "none":
            # Like sshd, the customary first "none" probe is free; later ones count.
            self._fail(request, "method none", counted=self._requests > 1)
        elif request.method == "publickey" and "publickey" in self._config.auth_methods:
            self._publickey(request)
        else:
            self._fail(request, f"method {request.method} not available")

    def _publickey(self, request: UserauthRequest) -> None:
        method = PublicKeyMethod.decode(Reader(request.method_data))
        try:
            key = parse_public_key(method.key_blob)
        except DecodeError as exc:
            self._fail(request, f"unusable key: {exc.description}")
            return
        if (
            method.algorithm not in key.signature_algorithms()
            or method.algorithm not in USER_SIGNATURE_ALGORITHMS
        ):
            self._fail(request, f"signature algorithm {method.algorithm} not allowed", key)
            return
        self._pending = _PendingPublicKey(request, method, key)
        self.state = AuthState.DECISION_PENDING
        self._emit(
            PublicKeyAuthRequested(
                username=request.username, public_key=key, signed=method.signature is not None
            )
        )

    def accept(self) -> None:
        pending = self._take_pending()
        request, method, key = pending.request, pending.method, pending.key
        if method.signature is None:
            self._send(UserauthPkOk(algorithm=method.algorithm, key_blob=method.key_blob).encode())
            return
        signed = publickey_signed_data(
            self._session_id(),
            request.username,
            request.service,
            method.algorithm,
            method.key_blob,
        )
        if not key.verify(method.algorithm, method.signature, signed):
            self._fail(request, "invalid signature", key)
            return
        self.state = AuthState.AUTHENTICATED
        self.username = request.username
        self._send(UserauthSuccess().encode())
        self._emit(
            Authenticated(
                username=request.username, method="publickey", key_fingerprint=key.fingerprint
            )
        )

    def reject(self, reason: str = "key not authorized") -> None:
        pending = self._take_pending()
        self._fail(pending.request, reason, pending.key)

    def _take_pending(self) -> _PendingPublicKey:
        if self._pending is None:
            raise LocalProtocolError("no authentication decision is pending")
        pending, self._pending = self._pending, None
        self.state = AuthState.AWAITING_REQUEST
        return pending

    def _fail(
        self,
        request: UserauthRequest,
        reason: str,
        key: PublicKey | None = None,
        *,
        counted: bool = True,
    ) -> None:
        if counted:
            self.failures += 1
            self._emit(
                AuthFailed(
                    username=request.username,
                    method=request.method,
                    reason=reason,
                    key_fingerprint=key.fingerprint if key else None,
                )
            )
        if self.failures >= self._config.max_auth_attempts:
            return  # the façade disconnects instead of inviting another try
        self._send(UserauthFailure(methods=self._config.auth_methods).encode())
