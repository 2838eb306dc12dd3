"""Host and port text: ``HOST:PORT`` with IPv6 hosts in brackets, both ways."""

from __future__ import annotations

import ipaddress


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into a host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"listen address {value!r} has no host")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 host in brackets (Go's JoinHostPort; ``parse_listen``'s
    inverse)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, from a dual-stack socket or a
    balancer's header) as the IPv4 address it is, as sshd's ipv64_normalise_mapped: the
    ``from=`` lists, source-address and per-source limits compare IPv4 networks."""
    if ":" not in host:
        return host
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return host if mapped is None else str(mapped)


def host_of(remote: str) -> str:
    """The host of a ``join_host_port`` address, without brackets."""
    return remote.rsplit(":", 1)[0].strip("[]")


def port_of(remote: str) -> str:
    """The port of a ``join_host_port`` address, as text; ``"0"`` when it has none."""
    port = remote.rpartition(":")[2]
    return port if port.isdigit() else "0"
