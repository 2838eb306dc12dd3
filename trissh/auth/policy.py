"""AuthPolicy: every authentication decision trissh makes from its configuration.

Sources: the server-wide ``--authorized-keys`` file (any user name), each user's own
keys, password hash and TOTP secret (``[users.NAME]``), and method chains
(``authentication_methods``). The answers do not depend on whether a user exists: an
unknown user meets the same methods, the same prompts and a dummy password check.

A successful method yields a ``Grant``: the restrictions its key carried (forced
command, no pty, environment) that the user's sessions must honour.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from trissh.auth.chains import MethodChains
from trissh.auth.passwords import verify_password
from trissh.auth.totp import TotpVerifier, load_secret
from trissh.authorized_keys import AuthorizedKey, OptionError, load_authorized_keys, parse_line
from trissh.config import ServerConfig, UserSection
from trissh.protocol import PublicKey

log = structlog.get_logger("trissh.auth")

PASSWORD_PROMPT = ("Password: ", False)
CODE_PROMPT = ("Verification code: ", True)


class PolicyError(Exception):
    """The configuration's credentials cannot be loaded; the message names the file."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Restrictions a login carries into its sessions."""

    forced_command: str | None = None
    allow_pty: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)

    def merged(self, other: Grant) -> Grant:
        """Both restrictions at once (a chain of methods narrows, never widens)."""
        return Grant(
            forced_command=self.forced_command or other.forced_command,
            allow_pty=self.allow_pty and other.allow_pty,
            environment={**other.environment, **self.environment},
        )


@dataclass(frozen=True, slots=True)
class Decision:
    ok: bool
    reason: str = ""
    grant: Grant = field(default_factory=Grant)


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """Who is asking, from where: what every decision may look at."""

    username: str
    remote_ip: str
    conn_id: str = ""


@dataclass(slots=True)
class _User:
    keys: list[AuthorizedKey]
    password_hash: str | None
    totp: TotpVerifier | None
    chains: MethodChains


def _grant(key: AuthorizedKey) -> Grant:
    options = key.options
    return Grant(
        forced_command=options.command,
        allow_pty=options.allow_pty,
        environment=dict(options.environment),
    )


class AuthPolicy:
    def __init__(
        self,
        settings: ServerConfig,
        global_keys: Sequence[AuthorizedKey] = (),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Load every credential now, so a broken file fails at start-up, not at login.

        Raises:
            PolicyError: a key, key file or TOTP secret cannot be used.
        """
        self._clock = clock
        self._global_keys = list(global_keys)
        self._failure_delay = settings.auth.failure_delay
        self._default_chains = settings.auth.authentication_methods
        self._users: dict[str, _User] = {
            name: self._load_user(name, section) for name, section in settings.users.items()
        }
        has_secrets = any(u.password_hash or u.totp for u in self._users.values())
        self.methods: tuple[str, ...] = (
            ("publickey", "password", "keyboard-interactive") if has_secrets else ("publickey",)
        )

    @property
    def failure_delay(self) -> float:
        return self._failure_delay

    def _load_user(self, name: str, section: UserSection) -> _User:
        keys: list[AuthorizedKey] = []
        for number, line in enumerate(section.authorized_keys, start=1):
            try:
                keys.append(parse_line(line, number))
            except OptionError as exc:
                raise PolicyError(f"users.{name}.authorized_keys[{number}]: {exc}") from None
        if section.authorized_keys_file is not None:
            keys += _load_key_file(section.authorized_keys_file)
        totp = None
        if section.totp_secret_file is not None:
            try:
                totp = TotpVerifier(load_secret(section.totp_secret_file))
            except ValueError as exc:
                raise PolicyError(f"users.{name}.totp_secret_file: {exc}") from None
        chains_text = section.authentication_methods or self._default_chains
        if chains_text:
            chains = MethodChains.parse(chains_text)
        else:
            single = ["publickey"]
            if totp is not None:
                single.append("keyboard-interactive")  # password (if any) and a code
            elif section.password_hash:
                single += ["password", "keyboard-interactive"]
            chains = MethodChains([method] for method in single)
        return _User(keys, section.password_hash, totp, chains)

    def chains_for(self, username: str) -> MethodChains:
        user = self._users.get(username)
        if user is not None:
            return user.chains
        if self._default_chains:
            return MethodChains.parse(self._default_chains)
        return MethodChains([["publickey"]])

    # -- publickey ------------------------------------------------------------------------

    async def publickey(self, request: LoginRequest, key: PublicKey) -> Decision:
        """Is ``key`` authorized for the user (global keys, then the user's own)?"""
        user = self._users.get(request.username)
        candidates = self._global_keys + (user.keys if user else [])
        now = self._clock()
        for entry in candidates:
            if entry.blob != key.blob or entry.options.cert_authority:
                continue
            if not entry.options.allows_source(request.remote_ip):
                return Decision(False, "key not allowed from this address")
            if entry.options.expired(now):
                return Decision(False, "key expired")
            return Decision(True, grant=_grant(entry))
        return Decision(False, "key not authorized")

    # -- password and keyboard-interactive -------------------------------------------------

    async def password(self, request: LoginRequest, password: str) -> Decision:
        user = self._users.get(request.username)
        stored = user.password_hash if user is not None else None
        if await verify_password(stored, password):
            return Decision(True)
        return Decision(False, "wrong password" if stored else "no password for this user")

    def prompts(self, request: LoginRequest, passed: Sequence[str]) -> list[tuple[str, bool]]:
        """What keyboard-interactive asks: the password unless already given, then a code
        if the user has TOTP. Unknown users are asked the same as a user with a password."""
        user = self._users.get(request.username)
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


def _load_key_file(path: Path) -> list[AuthorizedKey]:
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
