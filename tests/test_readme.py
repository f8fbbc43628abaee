"""Every command the README shows is run by a test here or by CI, and its TOML parses.

`COVERAGE` (at the end) maps each command of the README's ```sh blocks to the test that
runs it, so the README cannot gain a command nobody runs: `test_every_readme_command_is
_covered` fails until the new command has a test. The `./run` commands run for real,
through the real wrapper, with a config pointing at the loopback stand-ins. `./run sync`
reaches the Discord stand-in through a `sitecustomize` module on PYTHONPATH doing what
tests/standin/run_bot.py does (Python imports it at start-up), so the wrapper and
`python -m bot` stay unmodified. The Docker commands need a Docker engine, which CI does
not have: `.ci/run` runs scripts/check-docker.sh, which replays the image build and
checks docker-compose.yml and .env.example; the tests below assert that chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, load_config
from bot.errors import ConfigError
from tests.standin.discord_api import DiscordStandIn
from tests.standin.llm_api import LLMStandIn

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RUN = ROOT / "run"
TOKEN = "readme-bot-token-SECRET-42"
OVERRIDES = ("DISCORD_TOKEN", "LLM_API_KEY", "REDIS_URL", "BOT_CONFIG")

SITECUSTOMIZE = '''\
"""Point discord.py at the Discord stand-in, as tests/standin/run_bot.py does."""
import os

if os.environ.get("STANDIN_DISCORD_API"):
    import discord.gateway
    import discord.http
    import yarl

    discord.http.Route.BASE = os.environ["STANDIN_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        os.environ["STANDIN_DISCORD_GATEWAY"]
    )
'''


# --- reading the README -----------------------------------------------------------------


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


def readme_commands() -> list[str]:
    """Each command line of the ```sh blocks, without its trailing `# comment`."""
    commands = []
    for block in fenced_blocks("sh"):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def provider_recipes() -> dict[str, str]:
    """The "Provider recipes" block split into its recipes, by their `# Name` lines."""
    section = README.split("## Provider recipes", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```toml\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    recipes: dict[str, str] = {}
    name = ""
    for line in block.splitlines():
        if re.match(r"# \S", line):
            name = line[2:].split(" (")[0]
            recipes[name] = ""
        else:
            recipes[name] += line + "\n"
    return recipes


# --- running the wrapper ------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def venv_ready() -> None:
    """`./run` installs into .venv first unless scripts/ensure-venv.sh's stamp is current.

    `./test` (and so CI) runs that script before any test; a stale stamp here means the
    wrapper would pip-install in the middle of a test, so those tests skip instead.
    """
    stamp = ROOT / ".venv" / ".installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        pytest.skip(".venv is not up to date with pyproject.toml: run ./test once first")


def run_wrapper(
    args: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUN), *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def run_wrapper_async(
    args: list[str], *, cwd: Path, env: dict[str, str], stdin: str = "", limit: float = 60
) -> tuple[int, str, str]:
    """`./run ARGS` while this test's event loop keeps serving the stand-ins."""
    proc = await asyncio.create_subprocess_exec(
        str(RUN),
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), limit)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def config_file(path: Path, llm_url: str = "http://127.0.0.1:9/v1") -> Path:
    path.write_text(
        f'[llm]\nbase_url = "{llm_url}"\nmodel = "stand-in"\nmax_retries = 0\n'
        f'[redis]\ndata_dir = "{path.parent / "redis"}"\n'
    )
    return path


# --- the commands ---------------------------------------------------------------------------


def test_run_without_a_token_says_where_to_put_one(venv_ready: None, tmp_path: Path) -> None:
    done = run_wrapper([], cwd=tmp_path, env=clean_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("No Discord bot token is configured.")
    assert "export DISCORD_TOKEN=your-token" in done.stderr
    assert "https://discord.com/developers/applications" in done.stderr
    assert "Installing" not in done.stderr and "Creating the virtualenv" not in done.stderr


async def test_run_chat_talks_through_the_real_services(venv_ready: None, tmp_path: Path) -> None:
    async with LLMStandIn() as llm:
        env = clean_env(BOT_CONFIG=str(config_file(tmp_path / "config.toml", llm.base_url)))
        code, out, err = await run_wrapper_async(
            ["chat", "--channel", "try-out"],
            cwd=tmp_path,
            env=env,
            stdin="hello from the readme\n/usage\n/reset\n/quit\n",
        )
    assert code == 0, err
    assert out.startswith("Chatting in #try-out with stand-in. /help for commands.")
    assert "bot> Echo: " in out and "hello from the readme" in out
    assert "   today: " in out
    assert "Forgot 2 messages. The persona stays." in out
    assert out.rstrip().endswith("bye")
    assert len(llm.chat_requests) == 1
    assert "hello from the readme" in llm.chat_requests[0].body["messages"][-1]["content"]
    assert "embedded Redis stopped" in err
    assert "Traceback" not in err


@pytest.fixture
async def discord_standin() -> Any:
    async with DiscordStandIn(token=TOKEN) as standin:
        yield standin


def standin_wrapper_env(standin: DiscordStandIn, tmp_path: Path, config: Path) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return clean_env(
        PYTHONPATH=str(hook),
        STANDIN_DISCORD_API=standin.api_base,
        STANDIN_DISCORD_GATEWAY=standin.gateway_url,
        DISCORD_TOKEN=TOKEN,
        BOT_CONFIG=str(config),
    )


EXPECTED_COMMANDS = {"chat", "persona", "reset", "usage", "memory", "model", "tools"}


async def test_run_sync_guild_registers_the_commands_in_that_server(
    venv_ready: None, tmp_path: Path, discord_standin: DiscordStandIn
) -> None:
    guild = discord_standin.add_guild("README server", guild_id=123456789012345678)
    env = standin_wrapper_env(discord_standin, tmp_path, config_file(tmp_path / "config.toml"))
    code, out, err = await run_wrapper_async(
        ["sync", "--guild", "123456789012345678"], cwd=tmp_path, env=env
    )
    assert code == 0, err
    assert {c["name"] for c in discord_standin.synced_commands(guild)} == EXPECTED_COMMANDS
    assert discord_standin.synced_commands(None) == []
    assert (
        f"Synced {len(EXPECTED_COMMANDS)} commands to server 123456789012345678 (visible now)"
        in out
    )


async def test_run_sync_registers_the_commands_globally(
    venv_ready: None, tmp_path: Path, discord_standin: DiscordStandIn
) -> None:
    env = standin_wrapper_env(discord_standin, tmp_path, config_file(tmp_path / "config.toml"))
    code, out, err = await run_wrapper_async(["sync"], cwd=tmp_path, env=env)
    assert code == 0, err
    assert {c["name"] for c in discord_standin.synced_commands(None)} == EXPECTED_COMMANDS
    assert f"Synced {len(EXPECTED_COMMANDS)} commands to all servers" in out


def test_run_is_a_thin_wrapper_around_python_m_bot(venv_ready: None, tmp_path: Path) -> None:
    lines = [ln for ln in RUN.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[-1] == 'exec "$root/.venv/bin/python" -m bot "$@"'
    assert lines[-2] == '"$root/scripts/ensure-venv.sh"'
    done = run_wrapper(["sync", "--help"], cwd=tmp_path, env=clean_env())
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m bot sync [-h] [--guild GUILD]")


def test_run_config_reads_the_named_file(venv_ready: None, tmp_path: Path) -> None:
    readme_path = Path("/etc/llmbot/config.toml")
    if not readme_path.exists():  # the README's example path, verbatim
        done = run_wrapper(["--config", str(readme_path)], cwd=tmp_path, env=clean_env())
        assert done.returncode == 2
        assert done.stderr == f"Config error: {readme_path}: config file not found\n"
    bad = tmp_path / "elsewhere.toml"
    bad.write_text("[llm]\ntemperature = 5\n")
    expected = "Config error: llm.temperature = 5: must be a number from 0 to 2\n"
    for args, env in (
        (["--config", str(bad)], clean_env()),
        ([], clean_env(BOT_CONFIG=str(bad))),  # "(or set BOT_CONFIG)"
    ):
        done = run_wrapper(args, cwd=tmp_path, env=env)
        assert (done.returncode, done.stderr) == (2, expected)


def test_test_passes_pytest_arguments_through() -> None:
    done = subprocess.run(
        ["./test", "tests/test_store.py", "-k", "persona"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed, \d+ deselected", summary), summary


def ci_script() -> list[str]:
    return [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_ci_runs_the_test_suite() -> None:
    assert "./test -q" in ci_script()
    assert "set -euo pipefail" in ci_script()


def test_ci_runs_the_lint_format_and_type_checks() -> None:
    for command in (".venv/bin/ruff check .", ".venv/bin/ruff format --check .", ".venv/bin/mypy"):
        assert command in ci_script()


def test_benchmark_wrapper_runs_the_bench_package(venv_ready: None) -> None:
    """`./benchmark [--quick]` is `python -m bench` after the venv check.

    The benchmark machinery itself runs for real in tests/test_bench_smoke.py (its smallest
    scenario, no timing asserted); a full run takes minutes, so it is not in the suite.
    """
    lines = (ROOT / "benchmark").read_text().splitlines()
    assert lines[-1] == 'exec "$root/.venv/bin/python" -m bench "$@"'
    out = subprocess.run(
        [str(ROOT / "benchmark"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--quick" in out.stdout
    assert (ROOT / "tests" / "test_bench_smoke.py").exists()


def test_docker_commands_are_checked_in_ci() -> None:
    """No Docker engine in CI: scripts/check-docker.sh stands in for `docker compose up`."""
    assert "bash scripts/check-docker.sh" in ci_script()
    check = (ROOT / "scripts" / "check-docker.sh").read_text()
    assert "scripts/build-runtime.sh" in check  # the image's install step, replayed
    assert "tests/test_packaging.py" in check  # compose, Dockerfile and .env.example facts
    packaging = (ROOT / "tests" / "test_packaging.py").read_text()
    assert "docker-compose.yml" in packaging and ".env.example" in packaging
    # `cp .env.example .env`: the file exists and holds the two secrets the README names.
    env_example = (ROOT / ".env.example").read_text()
    assert re.search(r"^DISCORD_TOKEN=", env_example, re.MULTILINE)
    assert re.search(r"^LLM_API_KEY=", env_example, re.MULTILINE)


def test_config_example_is_a_valid_config() -> None:
    """`cp config.example.toml config.toml` gives a config the bot accepts as it is."""
    config = load_config(ROOT / "config.example.toml", environ={})
    defaults = Config()
    for section in ("discord", "llm", "redis", "history", "logging", "health"):
        assert getattr(config, section) == getattr(defaults, section), section


# --- the README's TOML and claims -------------------------------------------------------


@pytest.mark.parametrize("name", list(provider_recipes()))
def test_provider_recipe_is_a_valid_llm_section(name: str, tmp_path: Path) -> None:
    text = provider_recipes()[name]
    path = tmp_path / "config.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    raw = tomllib.loads(text)["llm"]
    assert config.llm.base_url == raw["base_url"]
    assert config.llm.model == raw["model"]
    assert config.llm.base_url.endswith("/v1")


def test_provider_recipes_are_all_there() -> None:
    assert list(provider_recipes()) == [
        "OpenAI",
        "Ollama",
        "llama.cpp server",
        "vLLM",
        "LM Studio",
        "OpenRouter",
        "Groq",
        "Several providers",
    ]


def test_several_providers_recipe_gives_three_models(tmp_path: Path) -> None:
    from bot.config import resolve_models

    path = tmp_path / "config.toml"
    path.write_text(provider_recipes()["Several providers"])
    specs = resolve_models(load_config(path, environ={"LLM_API_KEY_GROQ": "k"}))
    assert list(specs) == ["local", "groq-8b", "gpt-4o-mini"]
    assert specs["local"].fallback == "groq-8b" and specs["groq-8b"].llm.api_key == "k"


def test_every_other_toml_block_parses_as_a_config(tmp_path: Path) -> None:
    blocks = [b for b in fenced_blocks("toml") if "# OpenAI" not in b]
    assert blocks, "the [health] example"
    for block in blocks:
        path = tmp_path / "config.toml"
        path.write_text(block)
        config = load_config(path, environ={})
        if "[health]" in block:
            assert config.health.enabled and config.health.host == "0.0.0.0"
        if "[redis]" in block:  # the "Scaling out" example
            assert config.redis.cluster == "auto" and config.discord.shard_ids == [0]


def test_config_error_example_is_what_the_bot_prints(tmp_path: Path) -> None:
    (example,) = re.findall(r"e\.g\. `(Config error: [^`]+)`", README)
    path = tmp_path / "config.toml"
    path.write_text("[llm]\ntemperature = 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert f"Config error: {caught.value}" == example


def test_configuration_table_defaults_match_the_code() -> None:
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `?([^`|]+?)`? \|", README, re.MULTILINE)
    assert len(rows) >= 10
    defaults = Config()
    for key, shown in rows:
        section, name = key.split(".")
        value = getattr(getattr(defaults, section), name)
        if shown in ("empty",):
            assert value == "", key
        elif isinstance(value, bool):
            assert str(value).lower() == shown, key
        elif isinstance(value, int | float):
            assert float(shown) == value, key
        elif shown.startswith("http"):
            assert value == shown, key


@pytest.mark.parametrize(
    "text",
    [
        "Discord refused the Message Content intent",
        "Cannot start: Redis is unreachable",
        "The language model rejected the bot's API key",
        "The configured model does not exist",
        "My memory (Redis) is unavailable",
        "The Message Content intent looks disabled",
        "Discord rejected the bot token",
        "Cannot start the built-in Redis: the data directory {d} is in use by another bot",
    ],
)
def test_troubleshooting_messages_are_what_the_bot_says(text: str) -> None:
    source = "\n".join(
        p.read_text() for folder in ("bot", "cogs") for p in (ROOT / folder).rglob("*.py")
    )
    printed = re.sub(r"^Cannot start(?: the built-in Redis)?: ", "", text)
    for piece in re.split(r"\{[^}]*\}", printed):  # {d}: a value filled in at run time
        assert piece in source, text
    assert re.split(r" \{", text)[0].replace("{d}", "...") in README


# --- every command is run somewhere ---------------------------------------------------------


def coverage() -> dict[str, Callable[..., Any]]:
    """README command -> the test that runs it (or checks that CI does)."""
    return {
        "./run": test_run_without_a_token_says_where_to_put_one,
        "./test": test_ci_runs_the_test_suite,
        "./run chat --channel try-out": test_run_chat_talks_through_the_real_services,
        "./run sync --guild 123456789012345678": (
            test_run_sync_guild_registers_the_commands_in_that_server
        ),
        "./run sync": test_run_sync_registers_the_commands_globally,
        "./benchmark --quick": test_benchmark_wrapper_runs_the_bench_package,
        "./benchmark": test_benchmark_wrapper_runs_the_bench_package,
        "./run --config /etc/llmbot/config.toml": test_run_config_reads_the_named_file,
        "cp .env.example .env": test_docker_commands_are_checked_in_ci,
        "cp config.example.toml config.toml": test_config_example_is_a_valid_config,
        "docker compose up -d": test_docker_commands_are_checked_in_ci,
        "./test tests/test_store.py -k persona": test_test_passes_pytest_arguments_through,
        ".venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy": (
            test_ci_runs_the_lint_format_and_type_checks
        ),
    }


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands()
    missing = sorted(set(commands) - set(coverage()))
    assert not missing, f"README commands no test runs (add one to coverage()): {missing}"
    stale = sorted(set(coverage()) - set(commands))
    assert not stale, f"coverage() lists commands the README no longer shows: {stale}"
    this_module = sys.modules[__name__]
    for test in coverage().values():
        assert getattr(this_module, test.__name__) is test
