"""The podman backend: every sandbox a hardened container on a rootless podman service.

Theory of operation
-------------------
Lifecycle calls (create, start, inspect, remove, exec create, list) go through podman-py in
worker threads under one ``trio.CapacityLimiter``; the stdio streams are ours. A sandbox
container runs podman's init as PID 1 and a pause (or the in-container agent) as its main
process; each program of a session is started in it the way its *launcher* says, chosen
once when the container was made: by the agent, by ``podman exec`` with pipes handed into
the container, or by ``podman exec`` with podman's stream.

Modules, one concern each:

* :mod:`.backend`: :class:`PodmanBackend` and its sandboxes; the container lifecycle.
* :mod:`.api`: the podman service (threads, limits, error mapping, the upgrade request).
* :mod:`.spec`: what a container is made of (hardening, labels, mounts, resource limits).
* :mod:`.launch`: how programs start (the launchers, and what new containers get).
* :mod:`.exec`, :mod:`.exec_stdio`, :mod:`.stdio_frames`: a program as a ``podman exec``.
* :mod:`.direct_stdio`, :mod:`.fd_pipes`: a program's stdio as pipes into its container.
* :mod:`.agent`: programs started by the container's own agent.
* :mod:`.warm_pool`: containers started ahead of logins.
* :mod:`.removal`: bounded removal at teardown, deferred removal when podman failed.
* :mod:`.owner`: which trissh process owns a container, and the start-up sweep.
* :mod:`.health`: the host checks of ``trissh doctor`` and ``/readyz``.
"""

from trissh.backend.podman.api import socket_path
from trissh.backend.podman.backend import PodmanBackend, PodmanSandbox

__all__ = ["PodmanBackend", "PodmanSandbox", "socket_path"]
