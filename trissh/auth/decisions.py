"""What an authentication decision says: ``Decision`` (yes or no, and why), the ``Grant`` a
login carries into its sessions, the ``LoginRequest`` every decision looks at, and the
``Prompts`` of keyboard-interactive. Plain values, shared by the policy and the login."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trissh.auth.user_keys import UserKeyStore
from trissh.auth.webhook import Metadata
from trissh.config.forwarding import ForwardingGrant


@dataclass(frozen=True, slots=True)
class Grant:
    """What a login carries into its sessions: restrictions, and what webhooks decided."""

    forced_command: str | None = None
    allow_pty: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)
    #: The name an auth webhook verified (ContainerSSH's ``authenticatedUsername``).
    username: str | None = None
    #: ``[container]`` overrides from the configuration server, already validated.
    container: Mapping[str, Any] = field(default_factory=dict)
    #: ``[forwarding]`` as the configuration server set it (it may grant or refuse; the
    #: key options below still narrow what results).
    forwarding: ForwardingGrant = field(default_factory=ForwardingGrant)
    #: ``no-port-forwarding`` (key or certificate): no -L/-D/-W/-R, TCP or unix socket.
    allow_port_forwarding: bool = True
    allow_agent_forwarding: bool = True
    #: ``permitopen=`` / ``permitlisten=`` lists: a forward must match one entry of each
    #: list (they narrow ``[forwarding]``, never widen it).
    permit_open: tuple[tuple[str, ...], ...] = ()
    permit_listen: tuple[tuple[str, ...], ...] = ()
    #: Files webhooks asked for (absolute path -> content), placed in the container before
    #: the login's first program runs (as ContainerSSH: readable by the container's users).
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    #: Secret files (a delegated Kerberos ccache): written as the container's user, mode
    #: 0600. Never in a repr or a log.
    secret_files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    #: Where the user's own keys are, when they may manage them (RFC 4819 subsystem).
    user_keys: UserKeyStore | None = None
    #: The login's key or certificate carried restrictions (options, critical options,
    #: missing permit-* extensions): it may not add keys without them (RFC 4819 §3.1).
    restricted: bool = False

    def conflict(self, other: Grant) -> str | None:
        """Why both cannot hold at once (sshd refuses the login then), or ``None``."""
        mine, theirs = self.forced_command, other.forced_command
        if mine is not None and theirs is not None and mine != theirs:
            return "forced command options do not match"
        return None

    def merged(self, other: Grant) -> Grant:
        """Both at once: restrictions narrow, never widen; later facts add to earlier."""
        return Grant(
            forced_command=(
                self.forced_command if self.forced_command is not None else other.forced_command
            ),  # "" forces too: sshd runs ``sh -c ""``
            allow_pty=self.allow_pty and other.allow_pty,
            environment={**self.environment, **other.environment},
            username=other.username or self.username,
            container={**self.container, **other.container},
            forwarding=self.forwarding.merged(other.forwarding),
            allow_port_forwarding=self.allow_port_forwarding and other.allow_port_forwarding,
            allow_agent_forwarding=self.allow_agent_forwarding and other.allow_agent_forwarding,
            permit_open=self.permit_open + other.permit_open,
            permit_listen=self.permit_listen + other.permit_listen,
            files={**self.files, **other.files},
            secret_files={**self.secret_files, **other.secret_files},
            user_keys=other.user_keys or self.user_keys,
            restricted=self.restricted or other.restricted,
        )


def metadata_grant(metadata: Metadata, *, expose_metadata: bool = False) -> Grant:
    """What a login's webhook metadata (every answer's, merged in ContainerSSH's order)
    gives its programs: the ``environment`` (with ``exposeAuthMetadataAsEnv``, the
    ``metadata`` entries first, under it) and the ``files``."""
    exposed = {k: v.value for k, v in metadata.metadata.items()} if expose_metadata else {}
    environment = {**exposed, **{k: v.value for k, v in metadata.environment.items()}}
    files = {path: value.value for path, value in metadata.files.items()}
    return Grant(environment=environment, files=files)


@dataclass(frozen=True, slots=True)
class Decision:
    ok: bool
    reason: str = ""
    grant: Grant = field(default_factory=Grant)
    #: Extra fields for the auth_succeeded log line (certificate key id, CA).
    log: Mapping[str, str] = field(default_factory=dict)
    #: Webhook metadata to pass on to later webhook calls.
    metadata: Metadata | None = None
    #: What a FIDO security key's signature must show: the user's touch (unless the key's
    #: ``no-touch-required`` allows otherwise) and, with ``verify-required``, verification.
    touch_required: bool = True
    verify_required: bool = False
    #: The configuration server's ``exposeAuthMetadataAsEnv``.
    expose_metadata: bool = False


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """Who is asking, from where: what every decision may look at."""

    username: str
    remote_ip: str
    conn_id: str = ""
    #: ``host:port`` as webhooks want it, and the client's identification line.
    remote: str = ""
    client_version: str = ""
    #: What earlier webhook answers said, passed on to the next (ContainerSSH metadata).
    metadata: Metadata = field(default_factory=Metadata)

    def connection(self) -> dict[str, Any]:
        """The fields every webhook request carries."""
        return {
            "username": self.username,
            "remote_address": self.remote or self.remote_ip,
            "connection_id": self.conn_id,
            "client_version": self.client_version,
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class Prompts:
    """Keyboard-interactive wants answers to these; ``state`` comes back with them."""

    prompts: list[tuple[str, bool]]
    name: str = ""
    instruction: str = ""
    state: object = None
