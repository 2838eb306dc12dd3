"""Developer and CI sessions. Start them with `scripts/nox -s NAME` (it bootstraps nox).

- ``ci``: what CI runs and what the README's test command runs: host set-up (as root), lint,
  type check and the whole test suite against real podman and real OpenSSH clients.
- ``tests``: the fast suite (protocol, driver, in-process backend); no podman needed.
- ``lint``, ``typecheck``: ruff and mypy --strict.

``ci`` and ``podman`` set ``TRISSH_REQUIRE_ALL=1`` (as ``CI=true`` does): a test whose tool,
package or service is missing then fails, saying what to install, instead of skipping
(tests/support.py, docs/testing.md). Only ``tests`` may skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
# The tested versions of every dependency (see the file's header for why and how to move on).
PINNED = ("-c", str(ROOT / "constraints.txt"))
#: Every test runs: a missing tool, package or podman fails instead of skipping.
REQUIRE_ALL = {"TRISSH_REQUIRE_ALL": "1"}


def _install(session: nox.Session, extras: str = "test,lint") -> None:
    session.install(*PINNED, "-e", f".[{extras}]", silent=True)


def _setup_host(session: nox.Session) -> dict[str, str]:
    """Run the idempotent host set-up; return the environment pointing at its podman socket."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "setup-host.sh")], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        session.error("scripts/setup-host.sh failed (see its messages above)")
    line = result.stdout.strip().splitlines()[-1]
    key, _, value = line.partition("=")
    if key != "CONTAINER_HOST" or not value:
        session.error(f"scripts/setup-host.sh printed {line!r}, expected CONTAINER_HOST=...")
    return {"CONTAINER_HOST": value}


@nox.session
def ci(session: nox.Session) -> None:
    """Everything, against real podman and real clients (no test may skip)."""
    env = _setup_host(session)
    _install(session, "test,lint,kerberos")  # python-gssapi builds against setup-host's krb5
    session.run("ruff", "check", "trissh", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "trissh", "tests", "noxfile.py")
    session.run("mypy")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={**env, **REQUIRE_ALL},
    )


@nox.session
def tests(session: nox.Session) -> None:
    """The fast suite: no podman, real OpenSSH client where installed."""
    _install(session)
    session.run("pytest", "-m", "not podman", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*PINNED, "ruff", silent=True)
    session.run("ruff", "check", "trissh", "tests", "noxfile.py")
    session.run("ruff", "format", "--check", "trissh", "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session)
    session.run("mypy")


@nox.session
def podman(session: nox.Session) -> None:
    """Only the tests that need podman (host set-up included)."""
    env = _setup_host(session)
    _install(session, "test,lint,kerberos")
    session.run("pytest", "-m", "podman", *session.posargs, env={**env, **REQUIRE_ALL})


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmark (never a test): trissh vs AsyncSSH vs OpenSSH sshd; writes BENCHMARKS.md.

    As root (bench/prepare-host.sh): openssh-server if missing (its system service is never
    started), a host user for the benchmark's own sshd, the podman set-up and the bench image
    with GNU tools. ``-- --quick`` for a fast pass; ``-- --profile`` profiles trissh instead.
    """
    env = _setup_host(session)
    session.run("bash", str(ROOT / "bench" / "prepare-host.sh"), external=True, env=env)
    session.install(*PINNED, "-e", ".", "asyncssh>=2.14", "matplotlib>=3.8", "py-spy", silent=True)
    session.run("python", str(ROOT / "bench" / "run.py"), *session.posargs, env=env)


if os.environ.get("CI") == "true":
    nox.options.sessions = ["ci"]
