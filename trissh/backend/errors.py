"""Backend errors: what went wrong, phrased for the user who sees it on stderr."""

from __future__ import annotations

from typing import Final, Literal, get_args


class BackendError(Exception):
    """A container operation failed. ``str(err)`` is a one-line message fit for the user."""


class BackendUnavailable(BackendError):
    """The container service cannot be reached; a retry may succeed later."""


class ImageNotFound(BackendError):
    """The configured image does not exist locally."""

    def __init__(self, image: str, why: str = "") -> None:
        super().__init__(f"container image {image!r} not found{f' ({why})' if why else ''}")
        self.image = image


class ImagePullFailed(BackendError):
    """The image had to be pulled, and the registry did not give it."""

    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"container image {image!r} could not be pulled: {reason}")
        self.image = image


#: Why a socket inside a sandbox could not be made (:class:`ForwardError`); the channel
#: handlers turn it into SSH's refusal (RFC 4254 §5.1 reason codes).
ForwardReason = Literal[
    "refused", "unreachable", "unknown_host", "timeout", "unsupported", "failed"
]
FORWARD_REASONS: Final[frozenset[str]] = frozenset(get_args(ForwardReason))


class ForwardError(BackendError):
    """A connection or listener inside the sandbox could not be made.

    ``reason`` says why in a word (``refused``: nothing listens there; ``unreachable``: no
    route; ``unknown_host``: the name does not resolve; ``timeout``: no answer in time;
    ``unsupported``: this sandbox cannot make sockets; ``failed``: anything else, such as an
    address in use); ``str(err)`` is the detail, fit for the user.
    """

    def __init__(self, reason: ForwardReason, message: str) -> None:
        super().__init__(message)
        self.reason: ForwardReason = reason
