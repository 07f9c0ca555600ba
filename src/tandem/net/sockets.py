"""Listening sockets, made the one way every Tandem port makes them."""

from __future__ import annotations

import socket


def listen_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking TCP socket bound to (`host`, `port`) and listening (backlog 2048).
    `reuse_port` lets several processes share the port (the gateway's workers).
    Raises OSError when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock
