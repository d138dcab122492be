"""Network failures in plain words (DNS, refused, timeout, TLS), and the raw probes doctor uses."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import httpx2

_DNS_MESSAGES = ("name or service not known", "temporary failure in name resolution", "nodename nor servname",
                 "no address associated")


def _chain(err: BaseException) -> Iterator[BaseException]:
    """The exception and everything it was raised from (httpx2 wraps the OSError twice)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe(err: BaseException, host: str | None = None, port: int | None = None,
             timeout_s: float | None = None) -> str:
    """What went wrong reaching `host:port`, as a person would say it."""
    where = f"{host}:{port}" if host and port else host or "the server"
    causes = list(_chain(err))
    text = " ".join(str(e) for e in causes).lower()

    def caused_by(*kinds: type[BaseException]) -> bool:
        return any(isinstance(c, kinds) for c in causes)

    if caused_by(socket.gaierror) or any(m in text for m in _DNS_MESSAGES):
        return f"cannot resolve host {host or '(none)'} (DNS lookup failed)"
    if caused_by(ConnectionRefusedError) or "connection refused" in text:
        return f"connection refused by {where} (nothing is listening there)"
    if caused_by(httpx2.TimeoutException, TimeoutError):
        after = f" within {timeout_s:g}s" if timeout_s else ""
        return f"no answer from {where}{after} (timed out: a firewall, a VPN or a wrong port?)"
    if caused_by(ssl.SSLError):
        return f"TLS handshake with {where} failed: is it really https?"
    if caused_by(ConnectionResetError) or "connection reset" in text:
        return f"{where} reset the connection"
    if caused_by(httpx2.RemoteProtocolError):
        return f"{where} closed the connection without a complete HTTP answer"
    return f"cannot talk to {where}: {type(err).__name__}: {err}"


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to; socket.gaierror when it does not."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def tcp_connect(host: str, port: int, timeout_s: float) -> None:
    """Open and close one TCP connection; raises OSError (refused, timeout, ...) otherwise."""
    with socket.create_connection((host, port), timeout=timeout_s):
        pass
