"""Where a `callback_url` may point: public addresses only, unless the operator allows more.

The URL's host is resolved once, every address is checked, and the delivery then connects
to the checked address itself (`PinnedTarget.request_url`), so a DNS answer that changes
between the check and the connection (rebinding) cannot reach an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import SplitResult, urlsplit

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
ALLOW_VARIABLE = "LLMQ_CALLBACK_ALLOW"
_HOSTNAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")
# A last label of digits or hex is an IPv4 number to resolvers (`127.1`, `0x7f000001`), never a name.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_NAT64 = IPv6Network("64:ff9b::/96")
_SHARED = IPv4Network("100.64.0.0/10")


class CallbackRefused(ValueError):
    """The callback_url may not be used; the message says why and what would be accepted."""


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks an operator lets callbacks reach even though they are not public."""

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def none(cls) -> AllowList:
        return cls()

    @classmethod
    def parse(cls, spec: str | None) -> AllowList:
        """From `"localhost,127.0.0.0/8,::1,hooks.example"`; an IP literal is a one-address network."""
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in (spec or "").split(","):
            item = raw.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = item.rstrip(".")
            if not _HOSTNAME.match(name):
                raise ValueError(
                    f"{ALLOW_VARIABLE}: {raw.strip()!r} is neither a hostname nor an IP address or network"
                )
            hostnames.add(name)
        return cls(frozenset(hostnames), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hostnames

    def allows_address(self, ip: IPAddress) -> bool:
        candidates = [ip]
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            candidates.append(embedded)
        return any(addr in net for addr in candidates for net in self.networks if addr.version == net.version)


def _embedded_ipv4(ip: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 transition form really reaches (mapped, 6to4, NAT64)."""
    if not isinstance(ip, IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for anything that is not a plain public unicast address."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_forbidden_address(embedded)
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return True
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


@dataclass(frozen=True)
class PinnedTarget:
    """A checked callback: the URL as given, and the one address the delivery must connect to."""

    url: str
    scheme: str
    host: str
    port: int
    path_and_query: str
    address: str

    @property
    def request_url(self) -> str:
        addr = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{addr}:{self.port}{self.path_and_query}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS.get(self.scheme) else f"{host}:{self.port}"


def check_url_shape(url: str) -> SplitResult:
    """An absolute http(s) URL with a host, no credentials and a valid port."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"callback_url is longer than {MAX_URL_CHARS} characters")
    # urlsplit silently drops tabs and newlines; refuse them rather than guess what was meant.
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise CallbackRefused("callback_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise CallbackRefused(f"callback_url is not a valid URL: {err}") from None
    if parts.scheme.lower() not in DEFAULT_PORTS:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise CallbackRefused(f"callback_url must start with http:// or https://, got {shown}")
    if "@" in parts.netloc:
        raise CallbackRefused("callback_url must not contain a user name or password (user:pass@host)")
    if not parts.hostname:
        raise CallbackRefused("callback_url has no host, e.g. https://hooks.example.com/llmq")
    bad_port = "callback_url has an invalid port; it must be a number from 1 to 65535"
    try:
        port = parts.port
    except ValueError:
        raise CallbackRefused(bad_port) from None
    if port == 0:
        raise CallbackRefused(bad_port)
    return parts


def _normalize_host(host: str) -> tuple[str, IPAddress | None]:
    """The ASCII host and, for an IP literal, its address; odd forms are refused here."""
    if ":" in host:
        if "%" in host:
            raise CallbackRefused(f"callback_url host [{host}] has a zone identifier; these are not allowed")
        try:
            return host, IPv6Address(host)
        except ValueError:
            raise CallbackRefused(f"callback_url host [{host}] is not a valid IPv6 address") from None
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise CallbackRefused(f"callback_url host {host!r} is not a valid hostname") from None
    labels = ascii_host.rstrip(".").split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            return ascii_host, IPv4Address(ascii_host)
        except ValueError:
            raise CallbackRefused(
                f"callback_url host {host} is a non-standard IP address form; "
                "write IPv4 addresses as four decimal numbers like 93.184.215.14"
            ) from None
    if not _HOSTNAME.match(ascii_host):
        raise CallbackRefused(f"callback_url host {host!r} is not a valid hostname")
    return ascii_host, None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host`, in its order of preference."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _describe(ip: IPAddress) -> str:
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return f"an IPv6 form of {embedded}, which is {_describe(embedded)}"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    for attr, words in (
        ("is_loopback", "a loopback address"),
        ("is_unspecified", "an unspecified address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(ip, attr):
            return words
    return "not a public address"


def resolve_and_check(url: str, allow: AllowList, resolve: Resolver | None = None) -> PinnedTarget:
    """Check `url`, resolve its host, refuse any non-public address, and pin the first one."""
    parts = check_url_shape(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS[scheme]
    host, literal = _normalize_host(parts.hostname or "")
    by_name = literal is None and allow.allows_host(host)

    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            found = (resolve or system_resolve)(host, port)
            # Drop a scope suffix (fe80::1%eth0): it cannot go into a URL, and the address is judged alone.
            addresses = [ipaddress.ip_address(str(a).split("%", 1)[0]) for a in found]
        except (OSError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise CallbackRefused(f"callback_url host {host} does not resolve")

    if not by_name:
        for ip in addresses:
            if is_forbidden_address(ip) and not allow.allows_address(ip):
                via = "" if literal is not None else f" (resolves to {ip})"
                raise CallbackRefused(
                    f"callback_url host {host}{via} is {_describe(ip)}; callbacks may only go to "
                    f"public addresses (or hosts in {ALLOW_VARIABLE})"
                )

    path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return PinnedTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path_and_query=path_and_query,
        address=str(addresses[0]),
    )


async def resolve_and_check_async(url: str, allow: AllowList) -> PinnedTarget:
    """`resolve_and_check` with the name looked up on the running loop, so a deadline around it can cut it short."""
    parts = check_url_shape(url)
    host, literal = _normalize_host(parts.hostname or "")
    found: list[str] = []
    if literal is None:
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        except (OSError, UnicodeError):
            pass  # refused below as a host that does not resolve
    return resolve_and_check(url, allow, resolve=lambda _host, _port: found)


__all__ = [
    "AllowList",
    "CallbackRefused",
    "PinnedTarget",
    "check_url_shape",
    "is_forbidden_address",
    "resolve_and_check",
    "resolve_and_check_async",
    "system_resolve",
]
