"""The ``session`` channel kind (RFC 4254 §6): which requests a session takes, and the
messages only sessions send.

``pty-req`` and ``env`` are collected; ``shell``/``exec``/``subsystem`` turns them into one
``SessionRequested`` event, whose reply the driver gives once the program runs. Resizes,
signals and BREAK become events for the running program. Everything else is refused with a
reason for the operator's log.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from trissh.protocol.channels import (
    DEFERRED,
    ChannelKind,
    RequestOutcome,
    no_open_data,
)
from trissh.protocol.config import ProtocolConfig
from trissh.protocol.errors import NotText, TooLong
from trissh.protocol.events import (
    AgentForwardingRequested,
    ChannelId,
    Event,
    PtyRequest,
    SessionKind,
    SessionRequested,
    SignalReceived,
    TerminalSize,
    WindowChanged,
)
from trissh.protocol.messages.connection import (
    BreakData,
    EnvData,
    ExecData,
    ExitSignalData,
    ExitStatusData,
    PtyRequestData,
    SignalData,
    SubsystemData,
    WindowChangeData,
)
from trissh.protocol.wire import Reader

SESSION: Final = "session"
_UINT32_MAX: Final = 0xFFFFFFFF

#: Environment names refused whatever the allow-list says: they change how programs load,
#: find binaries or run start-up code (sshd's AcceptEnv has no such guard).
NEVER_ACCEPTED_ENV: Final = (
    "LD_*", "DYLD_*", "PATH", "BASH_ENV", "ENV", "IFS", "SHELLOPTS", "BASHOPTS", "PS4",
    "PROMPT_COMMAND", "HOME", "SHELL", "USER", "LOGNAME", "MAIL", "TMPDIR", "GCONV_PATH",
    "LOCPATH", "MALLOC_*", "NODE_OPTIONS", "PYTHON*", "PERL5*", "PERLLIB", "RUBYOPT", "RUBYLIB",
    "JAVA_TOOL_OPTIONS", "GIT_*", "TERMINFO*", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
    "ZDOTDIR", "GLIBC_TUNABLES", "NLSPATH", "OPENSSL_*", "LESSOPEN", "LESSCLOSE",
    "SSH_*", "KRB5CCNAME", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "LUA_INIT*", "PHPRC",
    "VIMINIT", "EXINIT", "CDPATH", "GLOBIGNORE",
)  # fmt: skip
#: The only names accepted at all: a shell's portable names. bash turns ``BASH_FUNC_x%%``
#: into a function that overrides a command (``cd``) in the command line trissh runs.
_PORTABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Names the guard lets through when ``accept_env`` lists them: git's wire protocol
#: version (``version=2``), which changes no program's loading, only what git speaks.
GUARD_EXCEPTIONS: Final = ("GIT_PROTOCOL",)


@dataclass(slots=True)
class SessionPolicy:
    """Connection-wide rules for sessions, changed by the driver as the login decides."""

    #: False when the login's key said no-pty (authorized_keys, certificate).
    pty_allowed: bool = True
    #: Set by ``no-more-sessions@openssh.com``.
    no_more_sessions: bool = False
    #: Whether ``auth-agent-req@openssh.com`` is granted (off until the login allows it).
    agent_forwarding: bool = False
    #: False when the login runs a forced command: the user may end it, not signal it.
    signals_allowed: bool = True


def _terminal_size(request: PtyRequestData | WindowChangeData) -> TerminalSize:
    return TerminalSize(
        columns=request.columns,
        rows=request.rows,
        width_px=request.width_px,
        height_px=request.height_px,
    )


@dataclass(slots=True)
class SessionRules:
    """One session channel's requests (a :class:`~.channels.ChannelRules`)."""

    channel_id: ChannelId
    config: ProtocolConfig
    policy: SessionPolicy
    emit: Callable[[Event], None]
    started: bool = False
    #: What the session runs, once started.
    kind: SessionKind | None = None
    pty: PtyRequest | None = None
    env: dict[str, str] = field(default_factory=dict)
    agent: bool = False

    def allow_again(self) -> None:
        self.started = False
        self.kind = None

    def on_request(self, request_type: str, data: Reader) -> RequestOutcome:
        try:
            if request_type == "pty-req":
                return self._pty(data)
            if request_type == "signal":
                return self._signal_request(SignalData.decode(data))
            if request_type == "env":
                return self._env(EnvData.decode(data))
            if request_type in ("shell", "exec", "subsystem"):
                return self._start(SessionKind(request_type), data)
        except (NotText, TooLong) as exc:  # a Latin-1 file name: this request fails, not the link
            return f"{request_type}: {exc}"
        if request_type == "auth-agent-req@openssh.com":
            return self._agent(data)
        if request_type == "window-change":
            size = WindowChangeData.decode(data)
            if self.pty is None:
                return "no terminal to resize"
            self.emit(WindowChanged(channel_id=self.channel_id, size=_terminal_size(size)))
            return True
        if request_type == "break":
            # RFC 4335: a BREAK on a terminal is an interrupt; without one there is nothing.
            BreakData.decode(data)
            if self.pty is None or not self.started:
                return "no terminal session to interrupt"
            return self._signal("INT")
        return "not supported"

    def _signal_request(self, signal: SignalData) -> RequestOutcome:
        if not self.started:
            return "no program to signal yet"
        return self._signal(signal.name)

    def _signal(self, name: str) -> RequestOutcome:
        """As sshd: the user may end a subsystem or a forced command, not signal it."""
        if self.kind is SessionKind.SUBSYSTEM or not self.policy.signals_allowed:
            return "signals are refused for subsystem and forced-command sessions"
        self.emit(SignalReceived(channel_id=self.channel_id, signal=name))
        return True

    def _pty(self, data: Reader) -> RequestOutcome:
        if not self.policy.pty_allowed:
            return "no terminal for this login"
        if self.started or self.pty is not None:
            return "a terminal only before the session starts, once"
        pty = PtyRequestData.decode(data)
        self.pty = PtyRequest(term=pty.term, size=_terminal_size(pty), modes=pty.modes)
        return True

    def _agent(self, data: Reader) -> RequestOutcome:
        data.check_end()
        if not self.policy.agent_forwarding:
            return "agent forwarding is not allowed"
        if self.started:
            return "agent forwarding only before the session starts"
        if not self.agent:
            self.agent = True
            self.emit(AgentForwardingRequested(channel_id=self.channel_id))
        return True

    def _env(self, env: EnvData) -> RequestOutcome:
        if self.started or len(self.env) >= self.config.max_env_vars:
            return "too many variables, or the session has started"
        if not _PORTABLE_NAME.fullmatch(env.name) or "\0" in env.value:
            return "not an environment variable name and value"
        if not any(fnmatch.fnmatchcase(env.name, p) for p in self.config.accept_env):
            return f"{env.name} is not in accept_env"
        if env.name not in GUARD_EXCEPTIONS and any(
            fnmatch.fnmatchcase(env.name, p) for p in NEVER_ACCEPTED_ENV
        ):
            return f"{env.name} is never accepted"
        self.env[env.name] = env.value
        return True

    def _start(self, kind: SessionKind, data: Reader) -> RequestOutcome:
        command = subsystem = None
        if kind is SessionKind.EXEC:
            command = ExecData.decode(data).command
        elif kind is SessionKind.SUBSYSTEM:
            subsystem = SubsystemData.decode(data).name
        else:
            data.check_end()
        if self.started:
            return "the channel already runs a session"
        self.started = True
        self.kind = kind
        self.emit(
            SessionRequested(
                channel_id=self.channel_id,
                kind=kind,
                command=command,
                subsystem=subsystem,
                pty=self.pty,
                env=dict(self.env),
                agent_forwarding=self.agent,
            )
        )
        return DEFERRED


def session_kind(
    config: ProtocolConfig, policy: SessionPolicy, emit: Callable[[Event], None]
) -> ChannelKind:
    """The ``session`` channel kind of one connection."""

    def refusal() -> str | None:
        return "no more sessions allowed on this connection" if policy.no_more_sessions else None

    return ChannelKind(
        name=SESSION,
        client_opens=True,
        read_open=no_open_data,
        make_rules=lambda channel_id: SessionRules(channel_id, config, policy, emit),
        refusal=refusal,
    )


def exit_status(code: int) -> bytes:
    """The data of an ``exit-status`` request (RFC 4254 §6.10)."""
    return ExitStatusData(code=code & _UINT32_MAX).encode()


def exit_signal(signal: str, *, core_dumped: bool = False, message: str = "") -> bytes:
    """The data of an ``exit-signal`` request (RFC 4254 §6.10)."""
    return ExitSignalData(signal=signal, core_dumped=core_dumped, message=message).encode()
