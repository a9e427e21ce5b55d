"""A real 3-master Redis Cluster on loopback, from the same redis-server binary the tests use.

Slots are assigned and nodes introduced with plain commands (CLUSTER ADDSLOTS / MEET), so no
redis-cli is needed. Each node keeps nothing on disk beyond its cluster config file.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from router.devstack.infra import redis_server_binary

SLOTS = 16384


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(20000, 50000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a Redis Cluster node")


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[str]:
    """Start ``masters`` cluster nodes; yields a seed URL; stops and removes them on exit."""
    binary = redis_server_binary()
    workdir = tempfile.mkdtemp(prefix="router-cluster-")
    ports = [_cluster_port() for _ in range(masters)]
    procs = []
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", f"{workdir}/nodes-{port}.conf", "--save", "", "--appendonly", "no",
                     "--dir", workdir, "--cluster-node-timeout", "2000"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5) for p in ports]
        deadline = time.monotonic() + 10
        for c in clients:
            while True:
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        per = SLOTS // masters
        for i, c in enumerate(clients):
            lo, hi = i * per, (SLOTS - 1 if i == masters - 1 else (i + 1) * per - 1)
            c.execute_command("CLUSTER ADDSLOTS", *range(lo, hi + 1))
        for p in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", p)
        deadline = time.monotonic() + 20
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("Redis Cluster did not reach state ok")
            time.sleep(0.1)
        # every node must know every other before clients fetch the slot map
        while not all(len(c.cluster("nodes")) == masters for c in clients):
            time.sleep(0.1)
        for c in clients:
            c.close()
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
