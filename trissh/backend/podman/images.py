"""Images: the pull policy applied before a container is made.

Theory of operation
-------------------
``ensure`` runs before each create: ``never`` does nothing (a missing image fails the
create with a message naming it and the policy); ``if-not-present`` asks podman whether
the image is in local storage and pulls when it is not; ``always`` pulls. A ``localhost/``
name means local storage in podman and is never pulled. Concurrent pulls of one image are
one pull: later callers wait for the first one's outcome.

A pull is ``POST /libpod/images/pull`` with the registry's credentials in the
``X-Registry-Auth`` header (``[podman.registries.HOST]``; they never reach a log line)
and ``tlsVerify=false`` for an ``insecure`` registry. podman answers with a stream of JSON
lines (``stream`` progress, ``error``, finally ``id``) read in a worker thread: progress
goes to the log as it comes (``image_pull_progress``, a bounded number of lines per pull),
then ``image_pulled`` or ``image_pull_failed``.

Cancellation: a caller cancelled while waiting leaves the pull running in its thread (it
is abandoned, bounded by the request timeout between two lines); a later caller starts
another if the image is still missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog
import trio

from trissh.backend._common import ms_since
from trissh.backend.errors import BackendError, ImageNotFound, ImagePullFailed
from trissh.backend.podman.api import PodmanApi

__all__ = ["Images", "Registry", "registry_of"]

log = structlog.get_logger("trissh.backend.podman")

#: Progress lines logged per pull (a pull of many layers writes two per layer).
MAX_PROGRESS_LINES: Final = 32
#: Longest error text kept from podman's answer.
_MAX_REASON: Final = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Registry:
    """How to pull from one registry."""

    username: str | None = None
    password: str | None = None
    insecure: bool = False

    def __repr__(self) -> str:  # a stray repr in a log or traceback shows no password
        return f"Registry(username={self.username!r}, insecure={self.insecure})"


def registry_of(image: str) -> str:
    """The registry part of an image name, as podman and docker read it: the first
    component when it has a ``.`` or ``:`` or is ``localhost``, else ``docker.io``."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


#: Images remembered as present (a configuration server may name any number).
PRESENT_BOUND: Final = 256


class _Pull:
    def __init__(self) -> None:
        self.done = trio.Event()
        #: It ended with an answer (the image, or ``error``), not cancelled with its login.
        self.answered = False
        self.error: BackendError | None = None


class Images:
    """Applies the pull policy for one backend.

    An image seen present is remembered, so ``if-not-present`` asks podman once rather than
    at every start; a create that then finds it missing (an operator removed it) makes the
    caller :meth:`forget` it and, when the policy allows a pull, ensure it again.
    """

    def __init__(self, api: PodmanApi, registries: Mapping[str, Registry]) -> None:
        self._api = api
        self._registries = dict(registries)
        self._pulls: dict[str, _Pull] = {}
        #: Images seen present, oldest first (a dict as an ordered set), at most PRESENT_BOUND.
        self._present: dict[str, None] = {}

    async def ensure(self, image: str, policy: str) -> None:
        """Make ``image`` present as ``policy`` says.

        Raises:
            ImagePullFailed: a pull was needed and failed.
            BackendUnavailable: podman cannot be reached.
        """
        if policy == "never" or registry_of(image) == "localhost":
            return
        if policy == "if-not-present":
            if image in self._present:
                return
            if await self._exists(image):
                self._seen(image)
                return
        pull = self._pulls.get(image)
        if pull is None:
            pull = self._pulls[image] = _Pull()
            try:
                await self._pull(image)
                pull.answered = True
            except BackendError as exc:
                pull.error, pull.answered = exc, True
            finally:
                del self._pulls[image]
                pull.done.set()
        else:
            await pull.done.wait()
            if not pull.answered:  # its login went away: this one pulls
                await self.ensure(image, policy)
                return
        if pull.error is not None:
            raise pull.error
        self._seen(image)

    def forget(self, image: str) -> None:
        """A create found ``image`` missing: it is not taken as present any more."""
        self._present.pop(image, None)

    @staticmethod
    def may_pull(image: str, policy: str) -> bool:
        """Whether ``policy`` lets ``image`` be pulled at all."""
        return policy != "never" and registry_of(image) != "localhost"

    def _seen(self, image: str) -> None:
        self._present.pop(image, None)
        self._present[image] = None
        if len(self._present) > PRESENT_BOUND:
            del self._present[next(iter(self._present))]

    @staticmethod
    def missing(image: str, policy: str) -> ImageNotFound:
        """The error of a create that found no image, saying why none was pulled."""
        if registry_of(image) == "localhost":
            return ImageNotFound(image, "localhost/ images are never pulled")
        if policy == "never":
            return ImageNotFound(image, "pull_policy is never")
        return ImageNotFound(image)

    async def _exists(self, image: str) -> bool:
        result = await self._api.request(
            "GET", f"/images/{image}/exists", missing_ok=True, abandon_on_cancel=True
        )
        return result is not None

    async def _pull(self, image: str) -> None:
        host = registry_of(image)
        registry = self._registries.get(host, Registry())
        headers = {}
        if registry.username:
            auth = {"username": registry.username, "password": registry.password or ""}
            headers["X-Registry-Auth"] = base64.b64encode(json.dumps(auth).encode()).decode()
        params = {"reference": image, "policy": "always"}
        if registry.insecure:
            params["tlsVerify"] = "false"
        started = time.monotonic()
        log.info("image_pull_started", image=image, registry=host)
        token = trio.lowlevel.current_trio_token()

        def progress(line: str) -> None:
            trio.from_thread.run_sync(
                lambda: log.info("image_pull_progress", image=image, progress=line),
                trio_token=token,
            )

        def run() -> str:
            response = self._api.client.api.post(
                "/images/pull", params=params, headers=headers, stream=True
            )
            return _read_pull_stream(response, image, progress)

        try:
            image_id = await self._api.call(run, abandon_on_cancel=True)
        except BackendError as exc:
            log.warning("image_pull_failed", image=image, error=str(exc))
            raise
        log.info("image_pulled", image=image, id=image_id[:12], duration_ms=ms_since(started))


def _read_pull_stream(response: Any, image: str, progress: Any) -> str:
    """podman's JSON lines about pulling ``image`` to its id; ``progress`` gets a bounded
    number of lines.

    Raises:
        ImagePullFailed: podman answered an error (status or ``error`` line).
    """
    if response.status_code >= 400:
        raise ImagePullFailed(image, _reason(response.text))
    shown = 0
    for raw in response.iter_lines():
        if not raw:
            continue
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if item.get("error"):
            raise ImagePullFailed(image, _reason(str(item["error"])))
        if item.get("stream") and shown < MAX_PROGRESS_LINES:
            shown += 1
            progress(str(item["stream"]).strip()[:_MAX_REASON])
        if item.get("id"):
            return str(item["id"])
    raise ImagePullFailed(image, "podman's answer ended without an image")


def _reason(text: str) -> str:
    """The useful end of podman's error: ``... reading manifest t1 in REPO: unauthorized:
    authentication required`` -> ``unauthorized: authentication required`` (with the
    repository when that is all there is)."""
    with contextlib.suppress(ValueError, AttributeError):  # a JSON error body
        body = json.loads(text)
        text = str(body.get("cause") or body.get("message") or text)
    text = " ".join(text.split())
    parts = text.split(": ")
    reason = ": ".join(parts[-2:]) if len(parts) > 2 else text
    return reason[:_MAX_REASON] or "unknown error"
