"""A real MIT Kerberos KDC for tests: its own realm, database, keytab and ccaches, all in a
temporary directory, listening on loopback only.

``start_kdc`` writes a kdc.conf and a krb5.conf, creates the database (``kdb5_util create
-s``), adds principals and a service keytab (``kadmin.local``) and runs ``krb5kdc -n`` in
the foreground. ``Kdc.env`` is what a process needs to use that realm (KRB5_CONFIG, a
private replay cache); ``kinit`` gets a principal's ticket into a ccache file of its own.
Nothing outside the directory is read or written (the system's /etc/krb5.conf included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_port, missing, require_binary

REALM = "TRISSH.TEST"
#: The name clients connect to (``ssh -o GSSAPIServerIdentity=...``): host/NAME@REALM.
SERVICE_HOST = "trissh.test"
SERVICE_PRINCIPAL = f"host/{SERVICE_HOST}@{REALM}"
PASSWORD = "kerberos-test-password"
#: Debian packages of the programs used here (scripts/setup-host.sh installs them).
PACKAGES = {"krb5kdc": "krb5-kdc", "kdb5_util": "krb5-kdc", "kadmin.local": "krb5-admin-server"}
PACKAGES |= {"kinit": "krb5-user", "klist": "krb5-user"}


@dataclass
class Kdc:
    directory: Path
    port: int
    keytab: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def ccache(self, principal: str) -> Path:
        return self.directory / f"ccache-{principal.replace('/', '_')}"

    def kinit(self, principal: str) -> Path:
        """A fresh forwardable TGT for ``principal`` in its own ccache file."""
        ccache = self.ccache(principal)
        subprocess.run(
            [require_binary("kinit"), "-f", "-c", f"FILE:{ccache}", principal],
            input=f"{PASSWORD}\n".encode(),
            env={**os.environ, **self.env},
            capture_output=True,
            check=True,
            timeout=30,
        )
        return ccache

    def klist(self, ccache: Path) -> str:
        """``klist`` of a ccache file: its default principal and tickets (or the error)."""
        result = subprocess.run(
            [require_binary("klist"), "-c", f"FILE:{ccache}"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout + result.stderr

    def client_env(self, principal: str) -> dict[str, str]:
        """The environment of a client holding ``principal``'s ticket."""
        return {**os.environ, **self.env, "KRB5CCNAME": f"FILE:{self.ccache(principal)}"}


def _write_config(directory: Path, port: int) -> dict[str, str]:
    kdc_conf = directory / "kdc.conf"
    kdc_conf.write_text(
        f"""[kdcdefaults]
 kdc_listen = 127.0.0.1:{port}
 kdc_tcp_listen = 127.0.0.1:{port}
[realms]
 {REALM} = {{
  database_name = {directory}/principal
  key_stash_file = {directory}/stash
  acl_file = {directory}/kadm5.acl
  kdc_listen = 127.0.0.1:{port}
  kdc_tcp_listen = 127.0.0.1:{port}
  max_life = 1h
 }}
[logging]
 kdc = FILE:{directory}/kdc.log
 admin_server = FILE:{directory}/kadmin.log
 default = FILE:{directory}/krb5.log
"""
    )
    krb5_conf = directory / "krb5.conf"
    krb5_conf.write_text(
        f"""[libdefaults]
 default_realm = {REALM}
 dns_lookup_kdc = false
 dns_lookup_realm = false
 dns_canonicalize_hostname = false
 rdns = false
 forwardable = true
 udp_preference_limit = 1
[realms]
 {REALM} = {{
  kdc = 127.0.0.1:{port}
 }}
[domain_realm]
 {SERVICE_HOST} = {REALM}
"""
    )
    rcache = directory / "rcache"
    rcache.mkdir(exist_ok=True)
    return {
        "KRB5_CONFIG": str(krb5_conf),
        "KRB5_KDC_PROFILE": str(kdc_conf),
        "KRB5RCACHEDIR": str(rcache),
        "KRB5_TRACE": str(directory / "trace.log"),
    }


def _admin(kdc: Kdc, query: str) -> None:
    subprocess.run(
        [require_binary("kadmin.local"), "-r", REALM, "-q", query],
        env={**os.environ, **kdc.env},
        capture_output=True,
        check=True,
        timeout=30,
    )


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def start_kdc(directory: Path, users: tuple[str, ...]) -> Iterator[Kdc]:
    """A running KDC with ``users`` (password ``PASSWORD``) and the service's keytab."""
    for program, package in PACKAGES.items():
        if shutil.which(program) is None:
            missing(program, f"run scripts/setup-host.sh as root (apt-get install {package})")
    for attempt in range(3):
        port = free_port()
        kdc = Kdc(directory, port, directory / "trissh.keytab")
        kdc.env = _write_config(directory, port)
        if attempt == 0:
            subprocess.run(
                [require_binary("kdb5_util"), "create", "-s", "-r", REALM, "-P", "master-key"],
                env={**os.environ, **kdc.env}, capture_output=True, check=True, timeout=30,
            )  # fmt: skip
            for user in users:
                _admin(kdc, f"addprinc -pw {PASSWORD} {user}")
            _admin(kdc, f"addprinc -randkey {SERVICE_PRINCIPAL}")
            _admin(kdc, f"ktadd -k {kdc.keytab} {SERVICE_PRINCIPAL}")
        process = subprocess.Popen(
            [require_binary("krb5kdc"), "-n", "-r", REALM, "-P", str(directory / "kdc.pid")],
            env={**os.environ, **kdc.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _wait_listening(port, process):
            kdc.process = process
            break
        process.kill()
        process.wait(10)
    else:
        raise AssertionError(f"krb5kdc did not listen; see {directory}/kdc.log")
    try:
        yield kdc
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
