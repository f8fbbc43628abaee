"""Redis Cluster: whether to use it, and the client for it.

Why a separate client: a cluster spreads keys over several primaries by hash slot, and
redis-py's cluster client follows the slot map, MOVED/ASK redirections and failovers.
The store keeps every multi-key command inside one slot (see bot/memory/store.py), so the
same store code runs on both.

During a failover the cluster client retries a command whose primary went away at once,
refreshing the slot map from the surviving nodes, RETRIES times; a replica takes over only
after the cluster's `cluster-node-timeout` plus an election (a second or two with a short
time-out), so the store itself tries a round trip again for a while (FAILOVER_WAIT_S in
bot/memory/store.py) before the user gets "memory unavailable".
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

# Connections per cluster node. The cluster client fails at once (no waiting) when a node's
# pool is exhausted, so it is sized above the busiest burst: every reply holds at most one
# connection per node for one round trip.
CLUSTER_MAX_CONNECTIONS = 256
# Immediate retries of a command whose node failed (redis-py's cluster client uses only the
# count of this Retry, not its backoff), each after refreshing the slot map.
RETRIES = 3


async def wants_cluster(client: aioredis.Redis, mode: Any) -> bool:
    """`redis.cluster`: true/false as configured; "auto" asks the server."""
    if mode is True or mode is False:
        return bool(mode)
    info = await client.info("cluster")
    return bool(int(info.get("cluster_enabled", 0) or 0))


def cluster_client(url: str) -> RedisCluster:
    """A cluster client seeded from one node's URL (it discovers the others)."""
    return RedisCluster.from_url(
        url,
        decode_responses=True,
        max_connections=CLUSTER_MAX_CONNECTIONS,
        # As for a single server: a hung node should become "memory unavailable" quickly.
        socket_connect_timeout=2,
        socket_timeout=2.5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES),
    )
