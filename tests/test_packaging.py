"""Facts about the Docker packaging, checked without a Docker engine.

The slow part (building the runtime venv exactly as the image does) lives in
scripts/check-docker.sh; these tests read the Dockerfile, docker-compose.yml,
.dockerignore and .env.example, and run the image's HEALTHCHECK command for real
against a health server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import ENV_OVERRIDES, DiscordConfig, HealthConfig
from bot.ops.health import HealthServer
from bot.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str
    stage: int


def _instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out: list[Instruction] = []
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, " ".join(args.split()), stage))
    return out


def _stage(n: int) -> list[Instruction]:
    return [i for i in _instructions() if i.stage == n]


def _final() -> list[Instruction]:
    last = max(i.stage for i in _instructions())
    return _stage(last)


def _one(instructions: list[Instruction], op: str) -> Instruction:
    found = [i for i in instructions if i.op == op]
    assert len(found) == 1, f"expected one {op}, found {len(found)}"
    return found[0]


def _healthcheck_argv() -> list[str]:
    args = _one(_final(), "HEALTHCHECK").args
    _, _, cmd = args.partition(" CMD ")
    argv = json.loads(cmd)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def _builder_prefix() -> str:
    run = [i for i in _stage(0) if i.op == "RUN" and "scripts/build-runtime.sh" in i.args]
    assert len(run) == 1, "the builder stage must RUN scripts/build-runtime.sh once"
    words = shlex.split(run[0].args)
    script = next(w for w in words if w.endswith("scripts/build-runtime.sh"))
    return words[words.index(script) + 1]


# --- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    froms = [i for i in _instructions() if i.op == "FROM"]
    assert len(froms) == 2
    assert froms[0].args == "python:3.11-slim AS builder"
    assert froms[1].args == "python:3.11-slim"


def test_builder_uses_the_build_runtime_script() -> None:
    prefix = _builder_prefix()
    assert prefix.startswith("/")
    copies = [i.args for i in _stage(0) if i.op == "COPY"]
    assert any("scripts/build-runtime.sh" in c for c in copies)
    assert any(c.split()[0] == "pyproject.toml" for c in copies)


def test_final_stage_copies_only_the_venv_from_the_builder() -> None:
    prefix = _builder_prefix()
    copies = [i.args for i in _final() if i.op == "COPY"]
    assert copies == [f"--from=builder {prefix} {prefix}"]
    env = " ".join(i.args for i in _final() if i.op == "ENV")
    assert f'PATH="{prefix}/bin:' in env


def test_final_stage_runs_as_non_root() -> None:
    final = _final()
    user = _one(final, "USER").args
    assert user.split(":")[0] not in ("root", "0")
    uid = user.split(":")[0]
    runs = " ".join(i.args for i in final if i.op == "RUN")
    assert "useradd" in runs and f"--uid {uid}" in runs
    # USER comes after everything that needs root.
    ops = [i.op for i in final]
    assert all(op != "RUN" for op in ops[ops.index("USER") :])


def test_final_stage_runtime_settings() -> None:
    final = _final()
    env = " ".join(i.args for i in final if i.op == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    assert "BOT_CONFIG=/app/config.toml" in env
    assert _one(final, "WORKDIR").args == "/app"
    assert _one(final, "EXPOSE").args == str(HealthConfig().port)
    assert json.loads(_one(final, "VOLUME").args) == ["/app/data"]
    assert json.loads(_one(final, "CMD").args) == ["python", "-m", "bot", "run"]


def test_healthcheck_queries_healthz_with_python() -> None:
    hc = _one(_final(), "HEALTHCHECK").args
    argv = _healthcheck_argv()
    assert argv[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{HealthConfig().port}/healthz" in argv[2]
    # The probe gives up before Docker kills it, so a slow answer counts as a failure
    # with a message rather than a bare "timed out".
    probe = re.search(r"timeout=(\d+(?:\.\d+)?)\)", argv[2])
    docker = re.search(r"--timeout=(\d+)s", hc)
    assert probe and docker
    assert float(probe.group(1)) < float(docker.group(1))


async def _run_probe(port: int) -> int:
    argv = _healthcheck_argv()
    code = argv[2].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize(("redis_ok", "expected_ok"), [(True, True), (False, False)])
async def test_healthcheck_command_against_a_live_server(redis_ok: bool, expected_ok: bool) -> None:
    async def gateway() -> bool:
        return True

    async def redis() -> bool:
        return redis_ok

    server = HealthServer(
        HealthConfig(enabled=True, host="127.0.0.1", port=0),
        Metrics(process=False),
        {"gateway": gateway, "redis": redis},
    )
    await server.start()
    try:
        assert server.port is not None
        rc = await _run_probe(server.port)
    finally:
        await server.stop()
    assert (rc == 0) is expected_ok


async def test_healthcheck_command_fails_when_nothing_listens() -> None:
    server = HealthServer(HealthConfig(enabled=True, port=0), Metrics(process=False), {})
    await server.start()
    port = server.port
    await server.stop()
    assert port is not None
    assert await _run_probe(port) != 0


def test_build_runtime_script_installs_non_editable_without_dev_extras() -> None:
    script = ROOT / "scripts" / "build-runtime.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "-m venv" in text
    assert " -e " not in text and "--editable" not in text
    assert "[dev]" not in text


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    lines = {
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    for entry in (".venv", ".git", "data", "tests", ".env", "config.toml", "**/__pycache__"):
        assert entry in lines, entry


def test_hadolint_config_is_strict() -> None:
    conf = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    assert conf["failure-threshold"] == "info"
    # Every ignored rule needs a reason: a comment line right above it.
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for n, line in enumerate(lines):
        if re.match(r"\s+- DL\d+|\s+- SC\d+", line):
            assert lines[n - 1].strip().startswith("#"), f"no reason given for {line.strip()}"


# --- docker-compose.yml --------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"bot", "redis"}
    for name, svc in compose["services"].items():
        assert "network_mode" not in svc, name
        assert svc.get("restart") == "unless-stopped", name


def test_compose_bot(compose: dict[str, Any]) -> None:
    bot = compose["services"]["bot"]
    assert bot["build"] == "."
    assert bot["env_file"] == ".env"
    assert "./config.toml:/app/config.toml:ro" in bot["volumes"]
    assert bot["depends_on"]["redis"]["condition"] == "service_healthy"
    assert bot["ports"], "the health port should be published"
    for port in bot["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"{port} is reachable from other hosts"
        assert str(port).endswith(f":{HealthConfig().port}")


def test_compose_gives_replies_time_to_finish(compose: dict[str, Any]) -> None:
    grace = compose["services"]["bot"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > DiscordConfig().shutdown_grace_s


def test_compose_redis(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    assert words[0] == "redis-server"
    assert words[words.index("--appendonly") + 1] == "yes"
    test = redis["healthcheck"]["test"]
    assert "redis-cli" in test and "ping" in test
    assert "ports" not in redis, "Redis should stay on the compose network"


def test_compose_redis_data_is_a_named_volume(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    mounts = compose["services"]["redis"]["volumes"]
    data_mounts = [m for m in mounts if str(m).split(":")[1] == "/data"]
    assert len(data_mounts) == 1
    assert str(data_mounts[0]).split(":")[0] in named


# --- .env.example --------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def test_env_example_has_every_secret_variable(compose: dict[str, Any]) -> None:
    env = _env_example()
    assert set(ENV_OVERRIDES) <= set(env)
    assert {"DISCORD_TOKEN", "LLM_API_KEY", "REDIS_URL"} <= set(env)
    # No real-looking secrets in a committed file.
    assert env["DISCORD_TOKEN"] == ""
    assert env["LLM_API_KEY"] == ""
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "redis" in compose["services"]
