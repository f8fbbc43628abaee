"""The cluster benchmark's machinery works: two bot processes, two shards, a few channels.

Correctness only, never timing (the machine is shared): every reply completes, each process
answers its own shard's channels, and every channel's history is complete and in order.
"""

from __future__ import annotations

import pytest

from bench.cluster import run
from tests.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


async def test_two_processes_on_two_shards_share_the_cluster(redis_cluster: LocalCluster) -> None:
    result = await run(6, 2, 20, 200, cluster=redis_cluster)
    assert result["replies_ok"] == result["replies"] == 12, result
    assert result["histories_complete_and_ordered"], result
    # 3 channels per shard x 2 rounds, plus each process's warm-up reply.
    assert result["replies_per_process"] == [7, 7]
    per_turn = result["cluster_commands_per_turn"]
    assert per_turn["eval"] == 4, "the lock, the commit and two counter scripts per turn"
