"""The operator's settings: ``load_config`` reads a TOML file and flags into a validated,
frozen ``ServerConfig`` (server.py); each module here holds a few sections."""

from trissh.config.auth import (
    AUTH_METHODS,
    AuthSection,
    AuthWebhookSection,
    KerberosSection,
    UserSection,
    WebhookSection,
)
from trissh.config.base import ConfigError
from trissh.config.container import ContainerSection, container_settings, parse_volume
from trissh.config.forwarding import (
    Direction,
    DirectionGrant,
    ForwardingGrant,
    ForwardingSection,
    parse_permit,
)
from trissh.config.server import ServerConfig, default_state_dir, load_config
from trissh.config.service import (
    SETUP_HOST_SOCKET,
    AdminSection,
    BackendSection,
    LimitSettings,
    MetricsSection,
    PodmanSettings,
    ProxySection,
    RecordingSection,
    RegistrySettings,
    SshSettings,
    parse_max_startups,
)
from trissh.config.session import SessionSection, subsystem_command
from trissh.config.workspaces import WorkspacesSection

__all__ = [
    "AUTH_METHODS",
    "SETUP_HOST_SOCKET",
    "AdminSection",
    "AuthSection",
    "AuthWebhookSection",
    "BackendSection",
    "ConfigError",
    "ContainerSection",
    "Direction",
    "DirectionGrant",
    "ForwardingGrant",
    "ForwardingSection",
    "KerberosSection",
    "LimitSettings",
    "MetricsSection",
    "PodmanSettings",
    "ProxySection",
    "RecordingSection",
    "RegistrySettings",
    "ServerConfig",
    "SessionSection",
    "SshSettings",
    "UserSection",
    "WebhookSection",
    "WorkspacesSection",
    "container_settings",
    "default_state_dir",
    "load_config",
    "parse_max_startups",
    "parse_permit",
    "parse_volume",
    "subsystem_command",
]
