"""Local only: an endpoint is contacted only when it is on this machine or the operator's network.

A host passes when every address it resolves to is loopback, private (RFC 1918, RFC 4193) or
link-local, or when the operator put it on the allow-list. Anything else is refused before a
single byte is sent, with the reason; no code path falls back to a cloud API.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from pantheon.core.errors import EndpointRefused

__all__ = ["check_endpoint", "is_local_address"]

Resolver = Callable[[str], list[str]]


def _resolve(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]) for info in infos})


_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local
        "::1/128",
        "fc00::/7",  # RFC 4193 unique local
        "fe80::/10",  # link-local
    )
)


def is_local_address(address: str) -> bool:
    """True for loopback, private (RFC 1918, RFC 4193) and link-local addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in _LOCAL_NETWORKS if net.version == ip.version)


def check_endpoint(url: str, *, allow: Iterable[str] = (), resolver: Resolver | None = None) -> str:
    """Return ``host:port`` of a local endpoint; raise EndpointRefused for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointRefused(
            f"endpoint {url!r} is not an http(s) URL", hint="e.g. http://127.0.0.1:8011/v1"
        )
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    allowed = {a.strip().lower() for a in allow if a.strip()}
    if host.lower() in allowed:
        return where
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = (resolver or _resolve)(host)
        except OSError as exc:
            raise EndpointRefused(
                f"endpoint {url!r}: cannot resolve {host!r} ({exc})",
                hint="use an IP address, or a name your resolver knows",
            ) from None
    if not addresses:
        raise EndpointRefused(f"endpoint {url!r}: {host!r} resolves to no address")
    public = [a for a in addresses if not is_local_address(a)]
    if public:
        raise EndpointRefused(
            f"endpoint {url!r} refused: {host} is {', '.join(public)}, which is not loopback or "
            f"a private address; Pantheon never sends work off the operator's machines",
            hint="run the model server locally, or add the host to allow_hosts if it is yours",
        )
    return where
