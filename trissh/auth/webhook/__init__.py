"""ContainerSSH-compatible authentication and configuration webhooks (the client side).

ContainerSSH users point trissh at the auth and config servers they already run; the wire
format, what trissh applies and where it differs from ContainerSSH are in docs/webhooks.md.
``wire`` has the messages (one pydantic model each), ``client`` the HTTP client (retries,
timeouts, TLS), ``containerssh`` what a configuration server's answer means for containers
and forwarding.
"""

from trissh.auth.webhook.client import MAX_RESPONSE_BYTES, WebhookClient, WebhookError
from trissh.auth.webhook.containerssh import ConfigRefused, ConfigResult, mapped_config
from trissh.auth.webhook.wire import (
    MAX_ENTRIES,
    MAX_PROMPTS,
    MAX_STATE_CHARS,
    AuthorizationRequest,
    AuthResponse,
    ConfigRequest,
    ConfigResponse,
    ConnectionInfo,
    FileValue,
    KeyboardInteractiveRequest,
    KeyboardInteractiveResponse,
    Metadata,
    PasswordRequest,
    Prompt,
    PublicKeyRequest,
    Value,
    authorized_key,
    remote_address,
)

__all__ = [
    "MAX_ENTRIES",
    "MAX_PROMPTS",
    "MAX_RESPONSE_BYTES",
    "MAX_STATE_CHARS",
    "AuthResponse",
    "AuthorizationRequest",
    "ConfigRefused",
    "ConfigRequest",
    "ConfigResponse",
    "ConfigResult",
    "ConnectionInfo",
    "FileValue",
    "KeyboardInteractiveRequest",
    "KeyboardInteractiveResponse",
    "Metadata",
    "PasswordRequest",
    "Prompt",
    "PublicKeyRequest",
    "Value",
    "WebhookClient",
    "WebhookError",
    "authorized_key",
    "mapped_config",
    "remote_address",
]
