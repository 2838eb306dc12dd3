"""The ``ssh-userauth`` service (RFC 4252, RFC 4256), server side.

Theory of operation
-------------------
Requests are handled one at a time, in order: while a decision is pending the façade
stops parsing, so pipelined requests wait in the receive buffer (RFC 4252 §5 allows
pipelining; the order of answers must match). Each method turns into a decision event
for the driver: whether a key, password or set of answers is good is the driver's policy;
proofs (signatures) are ours and are checked only after the driver said yes, so unknown
keys never cost a signature verification.

Multi-factor chains (sshd's ``AuthenticationMethods``) are the driver's policy too: it
accepts a method with the methods still ``remaining``, and the core answers with a
FAILURE carrying partial success and exactly those methods (RFC 4252 §5.1).

Keyboard-interactive (RFC 4256) is a conversation: the driver answers the request (and
each set of responses) with prompts, or with a verdict. A new USERAUTH_REQUEST abandons
the conversation, as §3.3 allows.

``gssapi-with-mic`` (RFC 4462) is one too, and the GSS-API context lives with the driver:
the core asks which mechanism (``GssapiAuthRequested``), hands over each context token
(``GssapiTokenReceived``, answered with the output token and whether the context is
established), then the MIC with the bytes it must cover (``GssapiMicReceived``, answered
yes or no like any decision). Only that last decision can log anyone in. A client's error
token ends the exchange without a FAILURE (the client has moved on, §3.9), but counts as
a failed attempt; so does a client that never sends a MIC (EXCHANGE_COMPLETE). A refused
mechanism does not count, up to a bound: clients try each of theirs in turn.

``AuthState`` (below) is the machine; ``_TRANSITIONS`` lists its legal moves.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from trissh.protocol.certificates import (
    CERTIFICATE_ALGORITHMS,
    Certificate,
    is_certificate_type,
    parse_certificate,
)
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
    AuthPartiallySucceeded,
    Event,
    GssapiAuthRequested,
    GssapiMicReceived,
    GssapiTokenReceived,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    PasswordAuthRequested,
    PublicKeyAuthRequested,
)
from trissh.protocol.keys import (
    USER_SIGNATURE_ALGORITHMS,
    PublicKey,
    parse_public_key,
    security_key_assertion,
)
from trissh.protocol.messages.gssapi import (
    GSSAPI_WITH_MIC,
    GssapiMethod,
    UserauthGssapiErrtok,
    UserauthGssapiExchangeComplete,
    UserauthGssapiMic,
    UserauthGssapiResponse,
    UserauthGssapiToken,
    gssapi_mic_data,
)
from trissh.protocol.messages.userauth import (
    MAX_PROMPTS,
    PUBLICKEY_HOSTBOUND,
    HostboundPublicKeyMethod,
    KeyboardInteractiveMethod,
    PasswordMethod,
    PublicKeyMethod,
    UserauthBanner,
    UserauthFailure,
    UserauthInfoRequest,
    UserauthInfoResponse,
    UserauthPkOk,
    UserauthRequest,
    UserauthSuccess,
    publickey_signed_data,
)
from trissh.protocol.wire import Reader

CONNECTION_SERVICE = "ssh-connection"
KEYBOARD_INTERACTIVE = "keyboard-interactive"
#: Context tokens one gssapi-with-mic exchange may take (Kerberos needs one; SPNEGO ~3).
MAX_GSSAPI_TOKENS = 16
#: Refused mechanisms that do not count as failed attempts (OpenSSH asks with each of its
#: mechanisms in turn, and sshd counts none of them: the server lacks the mechanism).
#: Past this many on one connection they count, so a loop of them still ends.
MAX_FREE_GSSAPI_REFUSALS = 8


def _chain_name(method: str) -> str:
    """The name chains and FAILURE lists use: host-bound public key is still publickey."""
    return "publickey" if method == PUBLICKEY_HOSTBOUND else method


class AuthState(enum.Enum):
    AWAITING_REQUEST = "awaiting_request"
    #: A decision event is out; parsing stops until the driver answers.
    DECISION_PENDING = "decision_pending"
    #: Keyboard-interactive prompts are out; the next message must answer them.
    AWAITING_RESPONSES = "awaiting_responses"
    #: gssapi-with-mic: a mechanism is chosen; the next message is a context token.
    GSSAPI_TOKENS = "gssapi_tokens"
    #: gssapi-with-mic: the context is established; the next message is the MIC.
    GSSAPI_MIC = "gssapi_mic"
    AUTHENTICATED = "authenticated"


#: States in which a new USERAUTH_REQUEST abandons a method's conversation.
_CONVERSATIONS: Final = frozenset(
    (AuthState.AWAITING_RESPONSES, AuthState.GSSAPI_TOKENS, AuthState.GSSAPI_MIC)
)


_TRANSITIONS: Final = {
    (AuthState.AWAITING_REQUEST, "ask"): AuthState.DECISION_PENDING,
    (AuthState.AWAITING_RESPONSES, "ask"): AuthState.DECISION_PENDING,
    (AuthState.AWAITING_RESPONSES, "abandon"): AuthState.AWAITING_REQUEST,
    (AuthState.DECISION_PENDING, "answer"): AuthState.AWAITING_REQUEST,
    (AuthState.DECISION_PENDING, "prompt"): AuthState.AWAITING_RESPONSES,
    (AuthState.AWAITING_REQUEST, "succeed"): AuthState.AUTHENTICATED,
    (AuthState.DECISION_PENDING, "gssapi_tokens"): AuthState.GSSAPI_TOKENS,
    (AuthState.DECISION_PENDING, "gssapi_mic"): AuthState.GSSAPI_MIC,
    (AuthState.GSSAPI_TOKENS, "ask"): AuthState.DECISION_PENDING,
    (AuthState.GSSAPI_MIC, "ask"): AuthState.DECISION_PENDING,
    (AuthState.GSSAPI_TOKENS, "abandon"): AuthState.AWAITING_REQUEST,
    (AuthState.GSSAPI_MIC, "abandon"): AuthState.AWAITING_REQUEST,
}


@dataclass(frozen=True, slots=True)
class _Pending:
    """The request a decision is pending for (publickey fields only for that method)."""

    request: UserauthRequest
    key: PublicKey | None = None
    method: PublicKeyMethod | None = None
    certificate: Certificate | None = None
    #: The host key a publickey-hostbound signature must cover.
    host_key: bytes | None = None
    prompts: int = 0
    #: gssapi-with-mic: the client's mechanisms (until one is chosen), the chosen one,
    #: the stage (``mechanism``, ``token``, ``mic``: what a pending decision is about;
    #: ``selected`` between decisions) and the client's tokens so far.
    mechanisms: tuple[bytes, ...] = ()
    mechanism: bytes = b""
    gssapi_stage: str = ""
    tokens: int = 0


class UserAuthServer:
    """Asks the driver, verifies proofs, counts failures, tracks the methods left."""

    def __init__(
        self,
        config: ProtocolConfig,
        send: Callable[[bytes], None],
        emit: Callable[[Event], None],
        session_id: Callable[[], bytes],
        send_success: Callable[[bytes], None],
        host_key_blobs: Callable[[], tuple[bytes, ...]],
    ) -> None:
        self._config = config
        #: K_S of the first key exchange, all its forms: what hostbound signatures bind.
        self._host_key_blobs = host_key_blobs
        self._send = send
        #: USERAUTH_SUCCESS goes through its own call: delayed compression starts after it.
        self._send_success = send_success
        self._emit = emit
        self._session_id = session_id
        self.state = AuthState.AWAITING_REQUEST
        self.failures = 0
        self._requests = 0
        self._pending: _Pending | None = None
        #: Methods the client may still use: all of them, until a partial success.
        self._methods: tuple[str, ...] = config.auth_methods
        self._first_username: str | None = None
        self.username: str | None = None
        self._gssapi_refusals = 0
        #: The one keyboard-interactive conversation left unanswered without a failure.
        self._free_abandon_used = False
        #: Whether the running keyboard-interactive conversation got responses.
        self._answered = False

    @property
    def decision_pending(self) -> bool:
        return self.state is AuthState.DECISION_PENDING

    def _move(self, action: str) -> None:
        try:
            self.state = _TRANSITIONS[self.state, action]
        except KeyError:
            raise LocalProtocolError(f"userauth cannot {action} in state {self.state}") from None

    def check_limit(self) -> None:
        """Raise once the client has used up its attempts (the façade disconnects)."""
        if self.failures >= self._config.max_auth_attempts:
            raise TooManyAuthAttempts("Too many authentication failures")

    # -- messages from the client -----------------------------------------------------------

    def handle(self, payload: bytes) -> None:
        if self.state is AuthState.AUTHENTICATED:
            return  # RFC 4252 §5.1: requests after success are ignored
        number = payload[0]
        if self.state in (AuthState.GSSAPI_TOKENS, AuthState.GSSAPI_MIC) and (
            number != MessageNumber.USERAUTH_REQUEST
        ):
            self._on_gssapi_message(number, Reader(payload, 1))
            return
        if number == MessageNumber.USERAUTH_INFO_RESPONSE:
            self._on_info_response(payload)
            return
        if number != MessageNumber.USERAUTH_REQUEST:
            raise UnexpectedMessage(f"message {number} is not a client userauth message")
        if self.state in _CONVERSATIONS:
            self._abandon_conversation()
        request = UserauthRequest.decode(Reader(payload, 1))
        if self._first_username is None:
            self._first_username = request.username
        elif request.username != self._first_username:
            # Like sshd: a factor passed as one user must never count for another.
            raise RemoteProtocolError("change of user name during authentication")
        if request.service != CONNECTION_SERVICE:
            raise RemoteProtocolError(
                f"service {request.service!r} not available", DisconnectReason.SERVICE_NOT_AVAILABLE
            )
        if self._requests == 0 and self._config.banner:  # RFC 4252 §5.4, as sshd: once
            self._send(UserauthBanner(message=self._config.banner).encode())
        self._requests += 1
        chain_name = _chain_name(request.method)
        if request.method == "none":
            # Like sshd, the customary first "none" probe is free; later ones count.
            self._fail(request, "method none", counted=self._requests > 1)
        elif chain_name not in self._methods:
            self._fail(request, f"method {request.method} not available")
        elif chain_name == "publickey":
            self._publickey(request)
        elif request.method == "password":
            self._password(request)
        elif request.method == GSSAPI_WITH_MIC:
            self._gssapi(request)
        elif request.method == KEYBOARD_INTERACTIVE:
            method = KeyboardInteractiveMethod.decode(Reader(request.method_data))
            self._answered = False
            self._ask(_Pending(request))
            self._emit(
                KeyboardInteractiveAuthRequested(
                    username=request.username, submethods=method.submethods
                )
            )
        else:
            self._fail(request, f"method {request.method} not available")

    def _abandon_conversation(self) -> None:
        """RFC 4256 §3.3, RFC 4462 §3.4: a new request ends the conversation, and counts as
        a failed attempt: every start is a decision (a webhook call, say), and a client
        restarting without answering must still run out of attempts. Once, prompts left
        unanswered are free (asyncssh leaves prompts it has no answers for and tries a
        password); a conversation answered in part never is."""
        abandoned, self._pending = self._pending, None
        unanswered = self.state is AuthState.AWAITING_RESPONSES and not self._answered
        self._move("abandon")
        if unanswered and not self._free_abandon_used:
            self._free_abandon_used = True
        elif abandoned is not None:
            self._fail(abandoned.request, "conversation abandoned", reply=False)
            self.check_limit()

    def _ask(self, pending: _Pending) -> None:
        self._pending = pending
        self._move("ask")

    def _publickey(self, request: UserauthRequest) -> None:
        host_key_blob = None
        if request.method == PUBLICKEY_HOSTBOUND:
            bound = HostboundPublicKeyMethod.decode(Reader(request.method_data))
            # As sshd: the host key of the first exchange, not any key of this server.
            if bound.host_key_blob not in self._host_key_blobs():
                self._fail(request, "signature bound to another server's host key")
                return
            host_key_blob = bound.host_key_blob
            method = PublicKeyMethod(
                algorithm=bound.algorithm, key_blob=bound.key_blob, signature=bound.signature
            )
        else:
            method = PublicKeyMethod.decode(Reader(request.method_data))
        certificate = None
        try:
            if is_certificate_type(method.algorithm):
                certificate = parse_certificate(method.key_blob)
                key = certificate.public_key
            else:
                key = parse_public_key(method.key_blob)
        except DecodeError as exc:
            self._fail(request, f"unusable key: {exc.description}")
            return
        if certificate is not None:
            allowed = CERTIFICATE_ALGORITHMS.get(method.algorithm, ("", ""))[0]
            acceptable = allowed == certificate.key_type
        else:
            acceptable = (
                method.algorithm in key.signature_algorithms()
                and method.algorithm in USER_SIGNATURE_ALGORITHMS
            )
        if not acceptable:
            self._fail(request, f"signature algorithm {method.algorithm} not allowed", key)
            return
        assertion = None
        if key.application is not None and method.signature is not None:
            assertion = security_key_assertion(method.signature)
            if assertion is None:
                self._fail(request, "malformed security key signature", key)
                return
        self._ask(
            _Pending(
                request, key=key, method=method, certificate=certificate, host_key=host_key_blob
            )
        )
        self._emit(
            PublicKeyAuthRequested(
                username=request.username,
                public_key=key,
                signed=method.signature is not None,
                certificate=certificate,
                security_key=assertion,
            )
        )

    def _password(self, request: UserauthRequest) -> None:
        method = PasswordMethod.decode(Reader(request.method_data))
        if method.new_password is not None:
            self._fail(request, "password change not supported")
            return
        self._ask(_Pending(request))
        self._emit(PasswordAuthRequested(username=request.username, password=method.password))

    def _gssapi(self, request: UserauthRequest) -> None:
        mechanisms = GssapiMethod.decode(Reader(request.method_data)).mechanisms
        if not mechanisms:
            self._fail(request, "no GSS-API mechanism offered")
            return
        self._ask(_Pending(request, mechanisms=mechanisms, gssapi_stage="mechanism"))
        self._emit(GssapiAuthRequested(username=request.username, mechanisms=mechanisms))

    def _on_gssapi_message(self, number: int, r: Reader) -> None:
        """A message of the gssapi-with-mic exchange in progress (RFC 4462 §3.4-3.9)."""
        pending = self._pending
        assert pending is not None
        request = pending.request
        tokens = self.state is AuthState.GSSAPI_TOKENS
        if tokens and number == MessageNumber.USERAUTH_GSSAPI_TOKEN:
            token = UserauthGssapiToken.decode(r).token
            if pending.tokens >= MAX_GSSAPI_TOKENS:
                self._end_gssapi(request, f"more than {MAX_GSSAPI_TOKENS} GSS-API tokens")
                return
            self._pending = dataclasses.replace(
                pending, gssapi_stage="token", tokens=pending.tokens + 1
            )
            self._move("ask")
            self._emit(GssapiTokenReceived(username=request.username, token=token))
        elif tokens and number == MessageNumber.USERAUTH_GSSAPI_ERRTOK:
            UserauthGssapiErrtok.decode(r)
            # The client has moved on to its next request (§3.9): no FAILURE for it.
            self._end_gssapi(request, "the client's GSS-API failed", reply=False)
        elif not tokens and number == MessageNumber.USERAUTH_GSSAPI_MIC:
            mic = UserauthGssapiMic.decode(r).mic
            self._pending = dataclasses.replace(pending, gssapi_stage="mic")
            self._move("ask")
            signed = gssapi_mic_data(self._session_id(), request.username, request.service)
            self._emit(GssapiMicReceived(username=request.username, mic=mic, signed_data=signed))
        elif not tokens and number == MessageNumber.USERAUTH_GSSAPI_EXCHANGE_COMPLETE:
            UserauthGssapiExchangeComplete.decode(r)
            self._end_gssapi(request, "no MIC (GSS-API context without integrity)")
        else:
            raise UnexpectedMessage(f"message {number} in a gssapi-with-mic exchange")

    def _end_gssapi(self, request: UserauthRequest, reason: str, *, reply: bool = True) -> None:
        self._move("abandon")
        self._pending = None
        self._fail(request, reason, reply=reply)

    def _on_info_response(self, payload: bytes) -> None:
        if self.state is not AuthState.AWAITING_RESPONSES or self._pending is None:
            raise UnexpectedMessage("USERAUTH_INFO_RESPONSE without prompts")
        response = UserauthInfoResponse.decode(Reader(payload, 1))
        if len(response.responses) != self._pending.prompts:
            raise RemoteProtocolError(
                f"{len(response.responses)} responses to {self._pending.prompts} prompts"
            )
        self._answered = True
        self._move("ask")
        self._emit(
            KeyboardInteractiveResponsesReceived(
                username=self._pending.request.username, responses=response.responses
            )
        )

    # -- the driver's answers -----------------------------------------------------------------

    def accept(self, remaining: Sequence[str] = ()) -> None:
        """Yes: PK_OK for a key query; else success, or partial success with ``remaining``."""
        if self._pending is not None and self._pending.gssapi_stage not in ("", "mic"):
            raise LocalProtocolError("gssapi-with-mic succeeds only on its MIC")
        pending = self._take_pending()
        request, key, method = pending.request, pending.key, pending.method
        if method is not None and method.signature is None:
            self._send(UserauthPkOk(algorithm=method.algorithm, key_blob=method.key_blob).encode())
            return
        if method is not None and key is not None:
            assert method.signature is not None
            signed = publickey_signed_data(
                self._session_id(),
                request.username,
                request.service,
                method.algorithm,
                method.key_blob,
                host_key_blob=pending.host_key,
            )
            verifier = pending.certificate or key
            if not verifier.verify(method.algorithm, method.signature, signed):
                self._fail(request, "invalid signature", key)
                return
        fingerprint = key.fingerprint if key is not None else None
        method_name = _chain_name(request.method)
        if remaining:
            unknown = set(remaining) - set(self._config.auth_methods)
            if unknown:
                raise LocalProtocolError(f"methods {sorted(unknown)} are not enabled")
            self._methods = tuple(remaining)
            self._send(UserauthFailure(methods=self._methods, partial_success=True).encode())
            self._emit(
                AuthPartiallySucceeded(
                    username=request.username,
                    method=method_name,
                    remaining=self._methods,
                    key_fingerprint=fingerprint,
                )
            )
            return
        self._move("succeed")
        self.username = request.username
        self._send_success(UserauthSuccess().encode())
        self._emit(
            Authenticated(
                username=request.username, method=method_name, key_fingerprint=fingerprint
            )
        )

    def reject(self, reason: str, error_token: bytes = b"") -> None:
        """No. ``error_token``: what a failed GSS-API step produced, for the client's GSS-API
        (sent as USERAUTH_GSSAPI_ERRTOK before the FAILURE, RFC 4462 §3.9)."""
        if error_token and (self._pending is None or self._pending.gssapi_stage != "token"):
            raise LocalProtocolError("an error token answers only a GSS-API token")
        pending = self._take_pending()
        if error_token:
            self._send(UserauthGssapiErrtok(token=error_token).encode())
        counted = True
        if pending.gssapi_stage == "mechanism":
            self._gssapi_refusals += 1
            counted = self._gssapi_refusals > MAX_FREE_GSSAPI_REFUSALS
        self._fail(pending.request, reason, pending.key, counted=counted)

    def select_gssapi_mechanism(self, mechanism: bytes) -> None:
        """Answer ``GssapiAuthRequested``: use ``mechanism``, one the client offered."""
        pending = self._gssapi_decision("mechanism")
        if mechanism not in pending.mechanisms:
            raise LocalProtocolError("the client did not offer that mechanism")
        self._pending = _Pending(pending.request, mechanism=mechanism, gssapi_stage="selected")
        self._move("gssapi_tokens")
        self._send(UserauthGssapiResponse(mechanism=mechanism).encode())

    def continue_gssapi(self, token: bytes | None, *, established: bool) -> None:
        """Answer ``GssapiTokenReceived``: send the GSS-API's output token, if any; then
        wait for the next token, or (``established``) for the MIC."""
        self._gssapi_decision("token")
        if token:
            self._send(UserauthGssapiToken(token=token).encode())
        self._move("gssapi_mic" if established else "gssapi_tokens")

    def _gssapi_decision(self, stage: str) -> _Pending:
        pending = self._pending
        if (
            self.state is not AuthState.DECISION_PENDING
            or pending is None
            or pending.gssapi_stage != stage
        ):
            raise LocalProtocolError(f"no gssapi-with-mic {stage} decision is pending")
        return pending

    def prompt(self, name: str, instruction: str, prompts: Sequence[tuple[str, bool]]) -> None:
        """Send keyboard-interactive prompts (``(text, echo)`` pairs) and await answers."""
        pending = self._pending
        if (
            self.state is not AuthState.DECISION_PENDING
            or pending is None
            or pending.request.method != KEYBOARD_INTERACTIVE
        ):
            raise LocalProtocolError("prompts only answer a keyboard-interactive decision")
        if len(prompts) > MAX_PROMPTS:
            raise LocalProtocolError(f"at most {MAX_PROMPTS} prompts")
        self._pending = _Pending(pending.request, prompts=len(prompts))
        self._move("prompt")
        self._send(
            UserauthInfoRequest(name=name, instruction=instruction, prompts=tuple(prompts)).encode()
        )

    def _take_pending(self) -> _Pending:
        if self.state is not AuthState.DECISION_PENDING or self._pending is None:
            raise LocalProtocolError("no authentication decision is pending")
        pending, self._pending = self._pending, None
        self._move("answer")
        return pending

    def _fail(
        self,
        request: UserauthRequest,
        reason: str,
        key: PublicKey | None = None,
        *,
        counted: bool = True,
        reply: bool = True,
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
        if self.failures >= self._config.max_auth_attempts or not reply:
            return  # the façade disconnects instead of inviting another try
        self._send(UserauthFailure(methods=self._methods).encode())
