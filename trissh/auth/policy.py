"""AuthPolicy: every authentication decision trissh makes from its configuration.

Sources: the server-wide ``--authorized-keys`` file (any user name), each user's own
keys, password hash and TOTP secret (``[users.NAME]``), and method chains
(``authentication_methods``). The answers do not depend on whether a user exists: an
unknown user meets the same methods, the same prompts and a dummy password check.

A successful method yields a ``Grant``: the restrictions its key carried (forced
command, no pty, environment) that the user's sessions must honour.

The webhooks are asked through :mod:`trissh.auth.webhook_calls`, which says what a
webhook that gives no answer means.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from trissh.auth.authorized_keys import (
    AuthorizedKey,
    OptionError,
    load_authorized_keys,
    parse_entry,
)
from trissh.auth.ca_keys import CaKeysError, load_trusted_cas
from trissh.auth.chains import MethodChains
from trissh.auth.decisions import Decision, Grant, LoginRequest, Prompts, metadata_grant
from trissh.auth.gssapi import Kerberos, KerberosError
from trissh.auth.key_files import deleted_since_start
from trissh.auth.passwords import verify_password
from trissh.auth.revocation import RevocationError, load_revoked_keys
from trissh.auth.totp import TotpVerifier, load_secret
from trissh.auth.user_keys import UserKeyStore
from trissh.auth.webhook import (
    AuthorizationRequest,
    ConfigRefused,
    ConfigRequest,
    KeyboardInteractiveRequest,
    Metadata,
    PasswordRequest,
    PublicKeyRequest,
    WebhookClient,
    WebhookError,
    authorized_key,
)
from trissh.auth.webhook_calls import webhook_answer, webhook_client, webhook_decision
from trissh.config import ServerConfig, UserSection, WebhookSection, default_state_dir
from trissh.protocol import PublicKey
from trissh.protocol.certificates import Certificate, check_user_certificate
from trissh.protocol.keys import SecurityKeyAssertion

log = structlog.get_logger("trissh.auth")


#: The decision values (decisions.py) are imported from here too.
__all__ = [
    "AuthPolicy",
    "Decision",
    "Grant",
    "LoginRequest",
    "PolicyError",
    "Prompts",
    "load_key_file",
    "metadata_grant",
]

PASSWORD_PROMPT = ("Password: ", False)
CODE_PROMPT = ("Verification code: ", True)


class PolicyError(Exception):
    """The configuration's credentials cannot be loaded; the message names the file."""


@dataclass(slots=True)
class _User:
    keys: list[AuthorizedKey]
    password_hash: str | None
    totp: TotpVerifier | None
    chains: MethodChains
    #: May manage their keys through the publickey subsystem (and log in with them).
    own_keys: bool = False


def _ca_line(
    request: LoginRequest,
    cert: Certificate,
    candidates: Sequence[AuthorizedKey],
    now: float,
) -> tuple[AuthorizedKey | None, str | None]:
    """The ``cert-authority`` line that lets ``cert`` in (its ``principals=`` replace the
    user name), or why none does; as sshd, a line whose ``from=`` or expiry refuses gives way
    to a later one for the same CA."""
    refusal = None
    for candidate in candidates:
        options = candidate.options
        if not options.cert_authority or candidate.blob != cert.signature_key.blob:
            continue
        results = [
            check_user_certificate(
                cert, username=name, now=int(now), source_ip=request.remote_ip,
                trusted_cas=(candidate.blob,),
            )
            for name in options.principals or (request.username,)
        ]  # fmt: skip
        if None not in results:
            refusal = results[0] or refusal
            continue
        if options.allows_source(request.remote_ip) and not options.expired(now):
            return candidate, None
        refusal = "CA key not allowed from this address or expired"
    return None, refusal


def _grant(key: AuthorizedKey) -> Grant:
    options = key.options
    return Grant(
        forced_command=options.command,
        allow_pty=options.allow_pty,
        environment=dict(options.environment),
        allow_port_forwarding=options.allow_port_forwarding,
        allow_agent_forwarding=options.allow_agent_forwarding,
        permit_open=(options.permit_open,) if options.permit_open else (),
        permit_listen=(options.permit_listen,) if options.permit_listen else (),
        restricted=options.restricts(),
    )


def _load_kerberos(settings: ServerConfig) -> Kerberos | None:
    if settings.auth.kerberos is None:
        return None
    try:
        return Kerberos(settings.auth.kerberos)
    except KerberosError as exc:
        raise PolicyError(str(exc)) from None


class AuthPolicy:
    def __init__(
        self,
        settings: ServerConfig,
        global_keys: Sequence[AuthorizedKey] = (),
        *,
        reloading: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Load every credential now, so a broken file fails at start-up, not at login.

        Raises:
            PolicyError: a key, key file or TOTP secret cannot be used.
        """
        self._clock = clock
        #: The configuration these credentials are from.
        self.settings = settings
        self._global_keys = list(global_keys)
        #: The rule every user name passes before any decision looks at it.
        self.user_names = settings.auth.user_names()
        self._failure_delay = settings.auth.failure_delay
        default_methods = settings.auth.authentication_methods
        self._default_chains = MethodChains.parse(default_methods) if default_methods else None
        self.kerberos = _load_kerberos(settings)
        self._webhook = _client(settings.auth.webhook, "webhook")
        has_secrets = any(u.password_hash or u.totp_secret_file for u in settings.users.values())
        #: Users without a ``[users.NAME]`` section, or whose table sets no credential.
        self._unknown_chains = self._default_chains or self._unknown_user_chains(has_secrets)
        self._reloading = reloading
        self._users: dict[str, _User] = {
            name: self._load_user(name, section) for name, section in settings.users.items()
        }
        ca_file = settings.auth.trusted_user_ca_keys_file
        if ca_file is not None and deleted_since_start(ca_file, reloading=reloading):
            ca_file = None
        try:
            self._user_cas = load_trusted_cas(settings.auth.trusted_user_ca_keys, ca_file)
        except CaKeysError as exc:
            raise PolicyError(str(exc)) from None
        self._revoked = None
        if settings.auth.revoked_keys is not None:
            try:
                self._revoked = load_revoked_keys(settings.auth.revoked_keys)
            except RevocationError as exc:
                raise PolicyError(str(exc)) from None
        self.user_keys = UserKeyStore(
            settings.auth.user_keys_directory or default_state_dir() / "user-keys",
            settings.auth.max_user_keys,
        )
        self._config_webhook = _client(settings.auth.config_webhook, "config_webhook")
        self._webhook_kbdint = bool(
            settings.auth.webhook and settings.auth.webhook.keyboard_interactive
        )
        self._webhook_authz = bool(settings.auth.webhook and settings.auth.webhook.authz)
        self.methods: tuple[str, ...] = (
            ("publickey", "password", "keyboard-interactive")
            if has_secrets or self._webhook is not None
            else ("publickey",)
        ) + self._kerberos_methods()

    def _unknown_user_chains(self, has_secrets: bool) -> MethodChains:
        """Publickey and, with a webhook, what it checks; else, where some user has a
        password, what that user meets (as sshd, an unknown name is asked the same and
        checked against a dummy hash: no answer tells it apart)."""
        if self._webhook is not None:
            others = self._webhook_methods()
        else:
            others = ("password", "keyboard-interactive") if has_secrets else ()
        methods = ("publickey", *others, *self._kerberos_methods())
        return MethodChains([method] for method in methods)

    def _webhook_methods(self) -> tuple[str, ...]:
        """What the auth webhook checks for a user without local secrets: passwords, and
        keyboard-interactive only when it answers that too (else every answer would fail)."""
        webhook = self.settings.auth.webhook
        if webhook is None:
            return ()
        return (
            ("password", "keyboard-interactive") if webhook.keyboard_interactive else ("password",)
        )

    def _kerberos_methods(self) -> tuple[str, ...]:
        return ("gssapi-with-mic",) if self.kerberos is not None else ()

    @property
    def failure_delay(self) -> float:
        return self._failure_delay

    async def aclose(self) -> None:
        """Close the webhook clients' pooled connections (shielded and bounded per client).

        Only once no login can still ask them: a policy replaced by a reload serves the
        logins of its older connections until their login grace time runs out.
        """
        for client in (self._webhook, self._config_webhook):
            if client is not None:
                await client.aclose()

    def _load_user(self, name: str, section: UserSection) -> _User:
        keys: list[AuthorizedKey] = []
        for number, entry in enumerate(section.authorized_keys, start=1):
            try:
                keys.append(parse_entry(entry))
            except OptionError as exc:
                raise PolicyError(f"users.{name}.authorized_keys[{number}]: {exc}") from None
        keys_file = section.authorized_keys_file
        if keys_file is not None and not deleted_since_start(keys_file, reloading=self._reloading):
            keys += load_key_file(keys_file)
        totp = None
        if section.totp_secret_file is not None:
            try:
                totp = TotpVerifier(load_secret(section.totp_secret_file))
            except ValueError as exc:
                raise PolicyError(f"users.{name}.totp_secret_file: {exc}") from None
        if section.authentication_methods:
            chains = MethodChains.parse(section.authentication_methods)
        elif self._default_chains is not None:
            chains = self._default_chains
        else:
            single = ["publickey", *self._kerberos_methods()]
            if totp is not None:
                single.append("keyboard-interactive")  # password (if any) and a code
            elif section.password_hash:
                single += ["password", "keyboard-interactive"]
            else:  # a table that only sets other things: as for anyone
                return _User(keys, None, None, self._unknown_chains, section.publickey_subsystem)
            chains = MethodChains([method] for method in single)
        return _User(keys, section.password_hash, totp, chains, section.publickey_subsystem)

    def share_totp(self, previous: AuthPolicy) -> None:
        """After a reload: a user whose TOTP secret did not change keeps the verifier the
        old policy has (which serves logins already under way), so a code used before the
        reload, or on either policy, is never taken twice."""
        for name, user in self._users.items():
            old = previous._users.get(name)
            if user.totp and old is not None and old.totp and user.totp.same_secret(old.totp):
                user.totp = old.totp

    def chains_for(self, username: str | None) -> MethodChains:
        """``username``'s method chains; ``None``: those of a user without a table (for a
        name the rule refused, never looked up)."""
        user = self._users.get(username) if username is not None else None
        return user.chains if user is not None else self._unknown_chains

    # -- publickey ------------------------------------------------------------------------

    async def publickey(
        self,
        request: LoginRequest,
        key: PublicKey,
        certificate: Certificate | None = None,
        security_key: SecurityKeyAssertion | None = None,
    ) -> Decision:
        """Is ``key`` (or the ``certificate`` for it) authorized for the user? Never when
        ``revoked_keys`` revokes it, whoever else would say yes; and for a FIDO key's
        signature (``security_key``), only with the flags its options require."""
        if self._revoked is not None:
            revoked = self._revoked.check(key.blob, certificate)
            if revoked is not None:
                return Decision(False, f"revoked: {revoked}")
        user = self._users.get(request.username)
        candidates = self._global_keys + (user.keys if user else [])
        if user is not None and user.own_keys:
            candidates += [k.authorized() for k in await self.user_keys.keys(request.username)]
        now = self._clock()
        if certificate is not None:
            decision = self._certificate(request, certificate, candidates, now)
        else:
            decision = self._local_key(request, key, candidates, now)
        if not decision.ok and self._webhook is not None:
            blob = certificate.blob if certificate is not None else key.blob
            response = await webhook_answer(
                self._webhook.pubkey(
                    PublicKeyRequest(public_key=authorized_key(blob), **request.connection())
                ),
                "pubkey",
            )
            decision = webhook_decision(response, "key")
        return _check_security_key(decision, security_key)

    def _local_key(
        self,
        request: LoginRequest,
        key: PublicKey,
        candidates: Sequence[AuthorizedKey],
        now: float,
    ) -> Decision:
        refusal = None  # as sshd: a line that refuses gives way to a later one for the key
        for entry in candidates:
            if entry.blob != key.blob or entry.options.cert_authority:
                continue
            if not entry.options.allows_source(request.remote_ip):
                refusal = refusal or "key not allowed from this address"
                continue
            if entry.options.expired(now):
                refusal = refusal or "key expired"
                continue
            return Decision(
                True,
                grant=_grant(entry),
                touch_required=entry.options.touch_required,
                verify_required=entry.options.verify_required,
            )
        return Decision(False, refusal or "key not authorized")

    def _certificate(
        self,
        request: LoginRequest,
        cert: Certificate,
        candidates: Sequence[AuthorizedKey],
        now: float,
    ) -> Decision:
        """sshd's rules: a trusted CA (a ``cert-authority`` line, whose ``principals=``
        then replace the user name and whose options apply, else [auth]), validity,
        principals, options."""
        where = f"key id {cert.key_id!r}, CA {cert.signature_key.fingerprint}"
        # As sshd: authorized_keys before TrustedUserCAKeys.
        entry, reason = _ca_line(request, cert, candidates, now)
        if entry is None:
            trusted = check_user_certificate(
                cert,
                username=request.username,
                now=int(now),
                source_ip=request.remote_ip,
                trusted_cas=self._user_cas,
            )
            if trusted is not None:
                return Decision(False, f"{reason or trusted} ({where})")
        grant = Grant(
            forced_command=cert.force_command,
            allow_pty=cert.permits("permit-pty"),
            allow_port_forwarding=cert.permits("permit-port-forwarding"),
            allow_agent_forwarding=cert.permits("permit-agent-forwarding"),
            # Always: a key it added (RFC 4819) would outlive its validity and revocation.
            restricted=True,
        )
        # As sshd merges them: no touch only if both allow it; verify if either asks.
        touch, verify = not cert.permits("no-touch-required"), cert.verify_required
        if entry is not None:
            line = _grant(entry)
            if conflict := grant.conflict(line):
                return Decision(False, f"{conflict} ({where})")
            grant = grant.merged(line)
            touch = touch or entry.options.touch_required
            verify = verify or entry.options.verify_required
        return Decision(
            True,
            grant=grant,
            log={"certificate": cert.key_id, "ca": cert.signature_key.fingerprint},
            touch_required=touch,
            verify_required=verify,
        )

    # -- password and keyboard-interactive -------------------------------------------------

    async def password(self, request: LoginRequest, password: str) -> Decision:
        user = self._users.get(request.username)
        stored = user.password_hash if user is not None else None
        if stored is None and self._webhook is not None:
            response = await webhook_answer(
                self._webhook.password(PasswordRequest(password=password, **request.connection())),
                "password",
            )
            return webhook_decision(response, "password")
        if await verify_password(stored, password):
            return Decision(True)
        return Decision(False, "wrong password" if stored else "no password for this user")

    async def keyboard_interactive(
        self,
        request: LoginRequest,
        passed: Sequence[str],
        submethods: str,
        responses: Sequence[str] | None = None,
        state: object = None,
    ) -> Prompts | Decision:
        """One step of keyboard-interactive: prompts to send, or the verdict.

        Local users (password and/or TOTP) get one round of prompts; everyone else is
        asked through the webhook, round by round, when ``keyboard_interactive`` is on.
        """
        user = self._users.get(request.username)
        local = user is not None and (user.password_hash or user.totp)
        if self._webhook is not None and self._webhook_kbdint and not local:
            return await self._webhook_round(request, submethods, responses, state)
        if responses is None:
            return Prompts(self.prompts(request, passed))
        return await self.answers(request, passed, responses)

    async def _webhook_round(
        self,
        request: LoginRequest,
        submethods: str,
        responses: Sequence[str] | None,
        state: object,
    ) -> Prompts | Decision:
        assert self._webhook is not None
        if isinstance(state, tuple):
            previous, last = state
            asked = previous.next_round(last, tuple(responses or ()))
        else:
            asked = KeyboardInteractiveRequest(submethods=submethods, **request.connection())
        question = self._webhook.keyboard_interactive(asked)
        answer = await webhook_answer(question, "keyboard-interactive")
        if answer is not None and answer.success is None:
            prompts = [(prompt.prompt, prompt.echo) for prompt in answer.prompts]
            return Prompts(prompts, answer.name, answer.instruction, (asked, answer))
        return webhook_decision(answer, "answers")

    async def finish(self, request: LoginRequest, grant: Grant) -> Decision:
        """The chain is complete: ``/authz`` and the configuration server, if configured,
        in that order (as ContainerSSH: the configuration server gets what ``/authz``
        returned in its metadata); the user's own key store, if they may manage it. The
        decision's metadata is what both webhooks returned."""
        username = grant.username or request.username
        gathered = Metadata()
        if self._webhook is not None and self._webhook_authz:
            response = await webhook_answer(
                self._webhook.authz(
                    AuthorizationRequest(authenticated_username=username, **request.connection())
                ),
                "authz",
            )
            if response is None:
                return Decision(False, "the auth webhook did not answer /authz")
            if not response.success:
                return Decision(False, "not authorized by the auth webhook")
            username = response.authenticated_username or username
            gathered = response.metadata
            request = dataclasses.replace(request, metadata=request.metadata.merged(gathered))
        user = self._users.get(username)
        own_keys = self.user_keys if user is not None and user.own_keys else None
        if self._config_webhook is None:
            grant = Grant(username=username, user_keys=own_keys)
            return Decision(True, grant=grant, metadata=gathered)
        try:
            config = await self._config_webhook.config(
                ConfigRequest(authenticated_username=username, **request.connection())
            )
        except ConfigRefused as exc:
            log.error("config_webhook_rejected", error=str(exc))
            return Decision(False, "the configuration server asked for what trissh cannot do")
        except WebhookError as exc:
            log.error("config_webhook_failed", error=str(exc))
            return Decision(False, "the configuration server did not answer")
        for note in config.ignored:
            log.info("config_webhook_field_ignored", note=note)
        try:
            self.settings.with_container_overrides(username, config.container)
            self.settings.with_forwarding_grant(username, config.forwarding)
        except ValueError as exc:
            log.error("config_webhook_rejected", error=str(exc))
            return Decision(False, "the configuration server sent invalid settings")
        grant = Grant(
            username=username,
            container=config.container,
            forwarding=config.forwarding,
            user_keys=own_keys,
        )
        return Decision(
            True,
            grant=grant,
            metadata=gathered.merged(config.metadata),
            expose_metadata=config.expose_metadata,
        )

    def prompts(
        self, request: LoginRequest | None, passed: Sequence[str]
    ) -> list[tuple[str, bool]]:
        """What keyboard-interactive asks: the password unless already given, then a code
        if the user has TOTP. Unknown users (and ``None``, a refused name) are asked the
        same as a user with a password."""
        user = self._users.get(request.username) if request is not None else None
        prompts = []
        if "password" not in passed and (user is None or user.password_hash or not user.totp):
            prompts.append(PASSWORD_PROMPT)
        if user is not None and user.totp is not None:
            prompts.append(CODE_PROMPT)
        return prompts

    async def answers(
        self, request: LoginRequest, passed: Sequence[str], responses: Sequence[str]
    ) -> Decision:
        """Check the responses to ``prompts(request, passed)``, all of them, always."""
        user = self._users.get(request.username)
        asked = self.prompts(request, passed)
        if len(responses) != len(asked):
            return Decision(False, "wrong number of answers")
        ok = True
        reasons: list[str] = []
        for (prompt, _), response in zip(asked, responses, strict=True):
            if prompt == PASSWORD_PROMPT[0]:
                stored = user.password_hash if user is not None else None
                if not await verify_password(stored, response):
                    ok = False
                    reasons.append("wrong password")
            elif user is None or user.totp is None or not user.totp.verify(response, self._clock()):
                ok = False
                reasons.append("wrong verification code")
        return Decision(ok, ", ".join(reasons))


def _check_security_key(decision: Decision, assertion: SecurityKeyAssertion | None) -> Decision:
    """A yes stays a yes only if the security key's flags show what the key requires."""
    if not decision.ok or assertion is None:
        return decision
    if decision.touch_required and not assertion.user_present:
        return Decision(False, "security key signature without user presence (no touch)")
    if decision.verify_required and not assertion.user_verified:
        return Decision(False, "security key signature without user verification")
    fields = {
        "security_key_flags": f"{assertion.flags:#04x}",
        "security_key_counter": str(assertion.counter),
    }
    return dataclasses.replace(decision, log={**decision.log, **fields})


def _client(section: WebhookSection | None, name: str) -> WebhookClient | None:
    """The client of ``[auth.NAME]``.

    Raises:
        PolicyError: its TLS files cannot be read or used.
    """
    if section is None:
        return None
    try:
        return webhook_client(section)
    except ValueError as exc:
        raise PolicyError(f"auth.{name}: {exc}") from None


def load_key_file(path: Path) -> list[AuthorizedKey]:
    """The keys of an authorized_keys file; each skipped line is logged.

    Raises:
        PolicyError: the file cannot be read.
    """
    try:
        keys, problems = load_authorized_keys(path)
    except OSError as exc:
        raise PolicyError(f"{path}: {exc.strerror}") from None
    for problem in problems:
        log.warning(
            "authorized_key_skipped", path=str(path), line=problem.line_number,
            problem=problem.problem,
        )  # fmt: skip
    return keys
