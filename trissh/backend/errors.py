"""Backend errors: what went wrong, phrased for the user who sees it on stderr."""

from __future__ import annotations


class BackendError(Exception):
    """A container operation failed. ``str(err)`` is a one-line message fit for the user."""


class BackendUnavailable(BackendError):
    """The container service cannot be reached; a retry may succeed later."""


class ImageNotFound(BackendError):
    """The configured image does not exist locally."""

    def __init__(self, image: str) -> None:
        super().__init__(f"container image {image!r} not found")
        self.image = image
