"""A pool's world is reachable from this host only: its rendezvous store and its ranks' gloo sockets
listen on the loopback interface, never on every interface."""
from __future__ import annotations

import ipaddress
import os

import psutil

from ascend_conformance.harness import loopback


def listening_addresses():
    """(ip, port) of every TCP socket this rank listens on, and its gloo interface setting."""
    sockets = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
               if c.status == psutil.CONN_LISTEN]
    return os.getpid(), sockets, os.environ.get("GLOO_SOCKET_IFNAME")


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback


def test_the_store_and_gloo_listen_on_loopback_only(world, world_runner):
    infos = world(2).run(listening_addresses)
    pids = {pid for pid, _, _ in infos}
    [pool] = [p for p in world_runner.pools.values() if set(p.pids) == pids]
    store = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == pool.store_port]
    assert store, f"the pool's store (port {pool.store_port}) is not listening in this process"
    assert all(_loopback(ip) for ip, _ in store), f"the rendezvous store listens on {store}"
    for pid, sockets, interface in infos:
        assert interface == loopback.loopback_interface()
        assert sockets, f"rank {pid} listens on nothing: gloo's listener was expected"
        assert all(_loopback(ip) for ip, _ in sockets), f"rank {pid} listens on {sockets}"
