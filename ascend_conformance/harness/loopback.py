"""A pool's world is reachable from this host only: rendezvous and gloo on the loopback interface.

``TCPStore(host, 0, is_master=True)`` listens on every interface whatever `host` says, and gloo binds
its pairs to the address the host name resolves to; on a shared cluster host any machine that can
reach it could then join a test world's rendezvous. A pool's world never leaves the host, so:

- the store gets a socket bound to 127.0.0.1 and already listening (``master_listen_fd``; the store
  owns the descriptor from then on, so it is handed a duplicate);
- ranks get ``GLOO_SOCKET_IFNAME`` set to the loopback interface (``lo`` on Linux).

torchrun (multi-node) mode keeps the launcher's settings: it does not use this module.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta

LOOPBACK_HOST = "127.0.0.1"


def loopback_store(world_size: int, timeout: timedelta):
    """A master TCPStore listening on 127.0.0.1 only, on a free port (``store.port``)."""
    import torch.distributed as dist

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK_HOST, 0))
        listener.listen(max(128, world_size))
        port = listener.getsockname()[1]
        fd = os.dup(listener.fileno())
    finally:
        listener.close()
    # On failure the descriptor is not closed here: the store may already own it, and closing a
    # number another thread has reused since would be worse than one leaked socket.
    return dist.TCPStore(LOOPBACK_HOST, port, world_size, is_master=True, wait_for_workers=False,
                         timeout=timeout, master_listen_fd=fd)


def loopback_interface() -> str | None:
    """Name of the loopback interface ('lo' on Linux, 'lo0' on macOS), None when there is none."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return None


def rank_environment() -> dict[str, str]:
    """Variables that keep a single-host world's gloo traffic on the loopback interface."""
    interface = loopback_interface()
    return {"GLOO_SOCKET_IFNAME": interface} if interface else {}
