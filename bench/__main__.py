"""`python -m bench` (or `./benchmark`): the streaming benchmark. Prints a table, writes JSON.

    ./benchmark                 # the default matrix (about 8 minutes on 2 cores)
    ./benchmark --quick         # a 1-2 minute subset
    ./benchmark --full          # everything, including 3000-token replies at 30 tok/s
    ./benchmark --json out.json --only 50ch

See docs/benchmarks.md for what is measured, how, and the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.e2e import STREAM_RATE, Scenario, run_scenario
from bench.micro import run_micro, run_redis_turns
from bench.report import evaluate_targets, format_report
from bot.memory.redis_server import EmbeddedRedis

SOAK_LABEL = "soak"
QUICK_LABEL = "quick replies"
#: Discord as a bot sees it: 150 +/- 100 ms per request (50-250 ms).
REALISTIC_DELAY = (0.05, 0.2)
#: Quick replies run against a fixed delay, so "within one round trip" has one meaning.
QUICK_DELAY = (0.15, 0.0)


def matrix(mode: str) -> list[Scenario]:
    """The scenarios of a mode; why this choice is explained in docs/benchmarks.md."""
    # A pause between a channel's questions, like people reading the answer: back to back,
    # 10 channels of quick exchanges keep the shared budget busy and each channel's edit
    # bucket (5 per 5 s) empty, which measures those limits instead of the reply path.
    quick_replies = Scenario(
        10, 300, 20, rounds=8, latency=QUICK_DELAY, quick=True, label=QUICK_LABEL, pause=1.0
    )
    if mode == "smoke":
        return [
            Scenario(1, 150, 40, ttft=0.05),
            Scenario(1, 300, 20, rounds=4, latency=(0.05, 0.0), quick=True, label=QUICK_LABEL),
        ]
    if mode == "quick":
        return [
            Scenario(1, 30, 300),
            Scenario(10, 30, 300),
            Scenario(50, 150, 300),
            quick_replies,
            Scenario(10, 150, 60, ttft=0.1, rounds=10, label=SOAK_LABEL),
        ]
    short = [Scenario(c, tps, 300) for tps in (30, 150) for c in (1, 10, 50, 200)]
    long_fast = [Scenario(c, 150, 3000) for c in (1, 10, 50)]
    long_slow = [Scenario(c, 30, 3000) for c in (1, 10)]
    soak = [Scenario(50, 150, 60, ttft=0.1, rounds=20, label=SOAK_LABEL)]
    latency = [Scenario(c, 30, 300, latency=REALISTIC_DELAY) for c in (1, 10, 50)]
    latency.append(quick_replies)
    if mode == "full":
        more = [Scenario(200, 150, 3000), Scenario(50, 30, 3000), Scenario(200, 30, 3000)]
        return [*short, *long_fast, *long_slow, *more, *latency, *soak]
    return [*short, *long_fast, *long_slow, *latency, *soak]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def profile_path(directory: Path, sc: Scenario) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{sc.name.replace(' ', '').replace(':', '-')}.txt"


async def run_all(
    scenarios: list[Scenario],
    *,
    quick_micro: bool,
    redis_turns: int,
    log: Callable[[str], None],
    profile_dir: Path | None,
    logs_dir: Path | None,
) -> dict[str, Any]:
    """Run the end-to-end scenarios, the Redis turn benchmark and the micro-benchmarks."""
    results: dict[str, Any] = {"scenarios": [], "soak": None}
    with tempfile.TemporaryDirectory(prefix="llmbot-bench-redis-") as tmp:
        redis = EmbeddedRedis(Path(tmp) / "data")
        await asyncio.to_thread(redis.start)
        try:
            for i, sc in enumerate(scenarios, 1):
                log(f"[{i}/{len(scenarios)}] {sc.name} ...")
                t = time.monotonic()
                profile = profile_path(profile_dir, sc) if profile_dir else None
                res = await run_scenario(
                    sc, redis.url, log=log, profile=profile, keep_logs=logs_dir
                )
                log(
                    f"      done in {time.monotonic() - t:.0f} s: {res['replies_ok']}/"
                    f"{res['replies']} replies ok, lag median {res['lag_s']['median']:.2f} s, "
                    f"429s {res['http_429']}"
                )
                if sc.label == SOAK_LABEL:
                    results["soak"] = res
                else:
                    results["scenarios"].append(res)
            log("Redis round trips per turn ...")
            results["redis"] = await run_redis_turns(redis.url, turns=redis_turns)
        finally:
            await asyncio.to_thread(redis.cleanup)
    log("micro-benchmarks ...")
    results["micro"] = await asyncio.to_thread(run_micro, quick=quick_micro)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./benchmark", description="Streaming benchmark of the bot (see docs/benchmarks.md)."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 1-2 minute subset")
    size.add_argument("--full", action="store_true", help="every scenario (about 15 minutes)")
    size.add_argument("--smoke", action="store_true", help="the smallest run (for tests)")
    parser.add_argument("--json", default="bench-results.json", help="where to write JSON")
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    parser.add_argument("--profile", type=Path, help="py-spy the bot into this directory")
    parser.add_argument("--logs", type=Path, help="keep the bot's and the LLM's logs here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "smoke" if args.smoke else "default"
    scenarios = [s for s in matrix(mode) if args.only in s.name]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    data: dict[str, Any] = {
        "version": 1,
        "mode": mode,
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"edit_interval_s": 1.0, "stream_rate": STREAM_RATE},
    }
    data.update(
        asyncio.run(
            run_all(
                scenarios,
                quick_micro=mode in ("quick", "smoke"),
                redis_turns=20 if mode == "smoke" else 120,
                log=log,
                profile_dir=args.profile,
                logs_dir=args.logs,
            )
        )
    )
    data["duration_s"] = time.monotonic() - started
    data["targets"] = evaluate_targets(data)
    print(format_report(data))
    Path(args.json).write_text(json.dumps(data, indent=1, allow_nan=True) + "\n")
    log(f"JSON written to {args.json}")
    failed_runs = [s["name"] for s in data["scenarios"] if s["timed_out"] or not s["replies"]]
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
