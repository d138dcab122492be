"""Dropping a client connection the hard way, as a crashing upstream would."""

from __future__ import annotations

import contextlib
import socket
import struct

from aiohttp import web

# SO_LINGER on with a zero timeout makes close() send a TCP RST instead of a polite FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


def abort_connection(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
