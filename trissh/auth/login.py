"""LoginConversation: one connection's authentication, between the core and the policy.

The core asks (decision events); the policy knows the answers; this class keeps what a
connection has passed so far, so multi-factor chains advance only when the core confirms a
method really succeeded (a signature is verified *after* our yes), and so the grants of
every passed method end up on the login. Failures wait a randomized delay first: guessing
gets slow, and timing says nothing about why.

The user name is checked first (:mod:`.names`), before the policy, a webhook or a log line
sees it: a name the rule refuses meets the methods, prompts, password check and delay of
an unknown user, and fails whatever the client proves, so the client cannot tell it from a
wrong key or password; the operator gets one ``user_name_refused`` line.

For ``gssapi-with-mic`` it also holds the attempt's GSS-API context (auth/gssapi.py): a
new one for each request, stepped with each token; on the MIC, the context must verify it
and its principal must be allowed the user name (``[auth.kerberos]``). A delegated
credential then becomes a ccache file for the container and KRB5CCNAME, when enabled.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import structlog
import trio

from trissh.auth.gssapi import GssExchange, GssFailure, Kerberos
from trissh.auth.names import escaped
from trissh.auth.passwords import verify_password
from trissh.auth.policy import AuthPolicy, Decision, Grant, LoginRequest, Prompts, metadata_grant
from trissh.auth.webhook import Metadata
from trissh.protocol import (
    AuthDecisionRequested,
    Authenticated,
    AuthPartiallySucceeded,
    GssapiAuthRequested,
    GssapiMicReceived,
    GssapiTokenReceived,
    KeyboardInteractiveAuthRequested,
    KeyboardInteractiveResponsesReceived,
    PasswordAuthRequested,
    PublicKeyAuthRequested,
    ServerConnection,
)

log = structlog.get_logger("trissh.auth.login")

#: Why a login with a refused name failed (the client sees only the failure).
NAME_REFUSED = "user name refused"
#: Decision events that go on with a method begun earlier.
_CONTINUATIONS = (KeyboardInteractiveResponsesReceived, GssapiTokenReceived, GssapiMicReceived)


class PolicySource(Protocol):
    """What holds a policy: the server's configuration (its context)."""

    @property
    def auth(self) -> AuthPolicy: ...


Source = TypeVar("Source", bound=PolicySource)


class LoginConversation(Generic[Source]):
    def __init__(
        self,
        latest: Callable[[], Source],
        conn: ServerConnection,
        request: Callable[[str, Metadata], LoginRequest],
        *,
        rng: random.Random | None = None,
    ) -> None:
        #: The configuration now served (a reload's): each new attempt asks its policy, as
        #: sshd reads its key files at each attempt; a method's later steps stay with the
        #: one that began it, and a login is served by the one that let it in.
        self._latest = latest
        self.source = latest()
        self._conn = conn
        self._request = request
        self._rng = rng or random.SystemRandom()
        #: Methods passed so far, in order (confirmed by the core).
        self.passed: list[str] = []
        self.grant = Grant()
        self._pending_grant: Grant | None = None
        #: The metadata the method being answered would add, once the core confirms it.
        self._pending_metadata: Metadata | None = None
        #: Keys that passed a step of the chain, and the one being answered.
        self._used_keys: set[bytes] = set()
        self._pending_key: bytes | None = None
        #: Extra fields for the log line of the last accepted method.
        self.log_fields: dict[str, str] = {}
        #: Webhook metadata so far, passed on with every later webhook call.
        self.metadata = Metadata()
        self._kbd_state: object = None
        self._kbd_submethods = ""
        #: Why the rule refused the connection's user name ("" once it passed).
        self._name_problem: str | None = None
        self._gss: GssExchange | None = None

    @property
    def _policy(self) -> AuthPolicy:
        """The policy of the configuration asked last."""
        return self.source.auth

    async def decide(self, event: AuthDecisionRequested) -> None:
        """Answer one decision event through the core's commands.

        Raises:
            TooManyAuthAttempts: the answer used up the client's attempts.
        """
        method = _method_of(event)
        if not isinstance(event, _CONTINUATIONS):
            self.source = self._latest()
        refused = self._name_refused(event.username)
        chains = self._policy.chains_for(None if refused else event.username)
        if method not in chains.next_methods(self.passed):
            await self._not_in_chains(event, f"{method} not allowed at this point for this user")
            return
        if refused:
            await self._fail_as_unknown(event, NAME_REFUSED)
            return
        request = self._request(event.username, self.metadata)
        match event:
            case PublicKeyAuthRequested():
                blob = event.public_key.blob
                if blob in self._used_keys:  # as sshd: one key counts once in a chain
                    await self._reject("key already used", final=event.signed)
                    return
                decision = await self._policy.publickey(
                    request, event.public_key, event.certificate, event.security_key
                )
                self._pending_key = blob
                await self._answer(request, decision, method, final=event.signed)
            case PasswordAuthRequested():
                decision = await self._policy.password(request, event.password)
                await self._answer(request, decision, method)
            case KeyboardInteractiveAuthRequested():
                self._kbd_submethods, self._kbd_state = event.submethods, None
                step = await self._policy.keyboard_interactive(
                    request, self.passed, event.submethods
                )
                await self._step(request, step, method)
            case KeyboardInteractiveResponsesReceived():
                step = await self._policy.keyboard_interactive(
                    request, self.passed, self._kbd_submethods, event.responses, self._kbd_state
                )
                await self._step(request, step, method)
            case GssapiAuthRequested() | GssapiTokenReceived() | GssapiMicReceived():
                await self._gssapi(request, event, method)

    async def _gssapi(
        self,
        request: LoginRequest,
        event: GssapiAuthRequested | GssapiTokenReceived | GssapiMicReceived,
        method: str,
    ) -> None:
        """One step of gssapi-with-mic (the module docstring)."""
        kerberos = self._policy.kerberos
        if isinstance(event, GssapiAuthRequested):
            if kerberos is None:  # a reload turned it off; the core still offers it
                self._conn.reject_auth("Kerberos is not configured")
                return
            mechanism = kerberos.choose(event.mechanisms)
            if mechanism is None:
                self._conn.reject_auth("no GSS-API mechanism in common (trissh speaks Kerberos)")
                return
            self._gss = kerberos.exchange()
            self._conn.accept_gssapi_mechanism(mechanism)
            return
        exchange = self._gss
        assert exchange is not None, "the core sends tokens only after a mechanism was chosen"
        if isinstance(event, GssapiTokenReceived):
            try:
                output, established = await exchange.step(event.token)
            except GssFailure as failure:
                if self._policy.failure_delay:
                    await trio.sleep(self._policy.failure_delay * self._rng.uniform(0.5, 1.5))
                self._conn.reject_auth(failure.reason, error_token=failure.token)
                return
            self._conn.continue_gssapi(output, established=established)
            return
        self._gss = None
        if not await exchange.verify_mic(event.signed_data, event.mic):
            decision = Decision(False, f"MIC of {exchange.principal} does not verify")
        else:
            assert kerberos is not None, "its exchange began under this policy"
            decision = await _kerberos_decision(kerberos, request, exchange)
        await self._answer(request, decision, method)

    def _name_refused(self, username: str) -> bool:
        """Whether the rule refuses ``username``; checked (and logged) once, as the core
        keeps a connection's user name fixed."""
        if self._name_problem is None:
            self._name_problem = self._policy.user_names.problem(username) or ""
            if self._name_problem:
                log.info("user_name_refused", user=escaped(username), reason=self._name_problem)
        return bool(self._name_problem)

    async def _not_in_chains(self, event: AuthDecisionRequested, reason: str) -> None:
        """A method offered to someone but not next for this user: keyboard-interactive
        fails at once and without prompts, so OpenSSH's client, which tries it before
        password, goes on to that; anything else as for an unknown name."""
        if isinstance(event, KeyboardInteractiveAuthRequested):
            self._conn.reject_auth(reason)
        else:
            await self._fail_as_unknown(event, reason)

    async def _fail_as_unknown(self, event: AuthDecisionRequested, reason: str) -> None:
        """Fail as a wrong password of an unknown user would (a refused name): same
        prompts, same dummy password check, same delay, so the answer does not tell which
        names the rule refused."""
        match event:
            case PublicKeyAuthRequested():
                await self._reject(reason, final=event.signed)
            case PasswordAuthRequested():
                await verify_password(None, event.password)
                await self._reject(reason, final=True)
            case KeyboardInteractiveAuthRequested():
                self._conn.send_auth_prompts("", "", self._policy.prompts(None, self.passed))
            case KeyboardInteractiveResponsesReceived():
                for response in event.responses[:1]:
                    await verify_password(None, response)
                await self._reject(reason, final=True)
            case GssapiAuthRequested() | GssapiTokenReceived() | GssapiMicReceived():
                await self._reject(reason, final=True)

    async def _reject(self, reason: str, *, final: bool) -> None:
        """No, after the failure delay unless this was only a key query."""
        if final and self._policy.failure_delay:
            await trio.sleep(self._policy.failure_delay * self._rng.uniform(0.5, 1.5))
        self._conn.reject_auth(reason)

    async def _step(self, request: LoginRequest, step: Prompts | Decision, method: str) -> None:
        if isinstance(step, Prompts):
            self._kbd_state = step.state
            self._conn.send_auth_prompts(step.name, step.instruction, step.prompts)
            return
        await self._answer(request, step, method)

    async def _answer(
        self, request: LoginRequest, decision: Decision, method: str, *, final: bool = True
    ) -> None:
        """``final`` is False for a publickey query: PK_OK, no chain step, no webhooks.
        What the answer gives (grant, webhook metadata) holds only once the core confirms
        the method (a key's signature verified): a query's or a failed signature's never."""
        if decision.ok and (conflict := self.grant.conflict(decision.grant)):
            decision = Decision(False, conflict)  # as sshd's sshauthopt_merge
        metadata = self.metadata
        if decision.ok and decision.metadata is not None:
            metadata = metadata.merged(decision.metadata)
        after = [*self.passed, method]
        chains = self._policy.chains_for(request.username)
        complete = chains.complete(after)
        if decision.ok and final and complete:
            decision, metadata = await self._finish(request, decision, metadata)
        if not decision.ok:
            await self._reject(decision.reason, final=final)
            return
        self._pending_grant = decision.grant
        self._pending_metadata = metadata
        self.log_fields = dict(decision.log)
        self._conn.accept_auth(remaining=() if complete else chains.next_methods(after))

    def _webhook_name_refused(self, name: str | None) -> Decision | None:
        """A user name a webhook gave that the user-name rule refuses: logged, refused."""
        if name and (problem := self._policy.user_names.problem(name)):
            log.info("user_name_refused", user=escaped(name), reason=problem, source="webhook")
            return Decision(False, f"the auth webhook's {NAME_REFUSED}")
        return None

    async def _finish(
        self, request: LoginRequest, decision: Decision, metadata: Metadata
    ) -> tuple[Decision, Metadata]:
        """The chain is complete: a name a webhook verified passes the rule too, then
        ``/authz`` and the configuration server (the policy's ``finish``)."""
        granted = self.grant.merged(decision.grant)
        if (refused := self._webhook_name_refused(granted.username)) is not None:
            return refused, metadata
        finish = await self._policy.finish(dataclasses.replace(request, metadata=metadata), granted)
        if not finish.ok:
            return finish, metadata
        if (refused := self._webhook_name_refused(finish.grant.username)) is not None:
            return refused, metadata
        # Every answer's metadata, merged in order (authentication, /authz, the
        # configuration server): its environment and files reach the programs.
        if finish.metadata is not None:
            metadata = metadata.merged(finish.metadata)
        webhooks = metadata_grant(metadata, expose_metadata=finish.expose_metadata)
        grant = decision.grant.merged(finish.grant).merged(webhooks)
        return dataclasses.replace(decision, grant=grant), metadata

    def confirmed(self, event: AuthPartiallySucceeded | Authenticated) -> None:
        """The core confirmed ``event.method`` (its proof checked): the chain advances."""
        self.passed.append(event.method)
        if self._pending_grant is not None:
            self.grant = self.grant.merged(self._pending_grant)
            self._pending_grant = None
        if self._pending_metadata is not None:
            self.metadata, self._pending_metadata = self._pending_metadata, None
        if event.method == "publickey" and self._pending_key is not None:
            self._used_keys.add(self._pending_key)


async def _kerberos_decision(
    kerberos: Kerberos, request: LoginRequest, exchange: GssExchange
) -> Decision:
    """The MIC verified: may the principal be this user? With its delegated credential,
    if any and enabled, as a ccache file for the container."""
    principal = exchange.principal or ""
    if not kerberos.may_log_in(principal, request.username):
        return Decision(False, f"principal {principal} may not log in as {request.username}")
    fields = {"principal": principal}
    grant = Grant()
    section = kerberos.section
    if section.delegate_credentials and (ccache := await exchange.delegated_ccache()):
        path = f"{section.ccache_directory.rstrip('/')}/krb5cc_trissh_{request.conn_id}"
        grant = Grant(environment={"KRB5CCNAME": f"FILE:{path}"}, secret_files={path: ccache})
        fields["delegated_credentials"] = path
    return Decision(True, grant=grant, log=fields)


def _method_of(event: AuthDecisionRequested) -> str:
    match event:
        case PublicKeyAuthRequested():
            return "publickey"
        case PasswordAuthRequested():
            return "password"
        case GssapiAuthRequested() | GssapiTokenReceived() | GssapiMicReceived():
            return "gssapi-with-mic"
        case _:
            return "keyboard-interactive"
