"""Config parsing: defaults, environment overrides, and one-line errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import Config, load_config
from bot.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path | str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    message = str(info.value)
    assert "\n" not in message, "config errors are one line"
    return message


def test_no_file_gives_defaults_plus_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "DISCORD_TOKEN": "SECRET-DISCORD",
        "LLM_API_KEY": "SECRET-LLM",
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }
    config = load_config(None, env)
    assert config.discord.token == "SECRET-DISCORD"
    assert config.llm.api_key == "SECRET-LLM"
    assert config.redis.url == "redis://127.0.0.1:1/0"
    assert config.llm.temperature == Config().llm.temperature
    assert "SECRET" not in repr(config)


def test_full_example_config_parses() -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    config = load_config(example, {})
    assert config.persona.presets, "the example documents presets"
    assert config.usage.prices


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[llm]\napi_key = "from-file"\nmodel = "m"\n')
    assert load_config(path, {"LLM_API_KEY": "from-env"}).llm.api_key == "from-env"
    assert load_config(path, {}).llm.api_key == "from-file"


def test_bot_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[llm]\nmodel = "picked"\n')
    assert load_config(None, {"BOT_CONFIG": str(path)}).llm.model == "picked"


def test_missing_explicit_file(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope.toml")
    assert "nope.toml" in message and "not found" in message


def test_bad_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in error_of(write(tmp_path, "[llm\nmodel = 1"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[llm]\ntemperature = 5", "llm.temperature = 5: must be a number from 0 to 2"),
        ('[llm]\ntemperature = "hot"', "llm.temperature = 'hot': must be a number"),
        ("[llm]\nmax_tokens = 9000\ncontext_tokens = 8192", "llm.max_tokens = 9000"),
        ("[llm]\ntemprature = 0.5", "llm.temprature: unknown key"),
        ("[nonsense]\na = 1", "nonsense: unknown key"),
        ("[history]\nmax_turns = true", "history.max_turns = True: must be a whole number"),
        ('[redis]\nurl = "http://x"', "redis.url = 'http://x': must be empty or a URL"),
        ('[redis]\ncluster = "yes"', "redis.cluster = 'yes': must be true, false or \"auto\""),
        ("[redis]\ncluster = 1", "redis.cluster = 1: must be true, false or"),
        ("[redis]\ncluster = true", "redis.cluster = true: needs redis.url"),
        ('[discord]\nallowed_guilds = ["x"]', "discord.allowed_guilds[0] = 'x'"),
        ("[persona]\nmax_chars = 5\n[persona.presets]\nlong = 'abcdefgh'", "persona.presets.long"),
        ("[usage.prices.m]\nprompt = -1", "usage.prices.m.prompt = -1"),
        ('[logging]\nlevel = "LOUD"', "logging.level = 'LOUD': must be DEBUG, INFO"),
    ],
)
def test_bad_values_name_key_value_and_rule(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(write(tmp_path, text))


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.llm.model = "x"  # type: ignore[misc]


def test_attachment_and_vision_settings(tmp_path: Path) -> None:
    example = load_config(Path(__file__).parent.parent / "config.example.toml", {})
    assert example.attachments == Config().attachments and example.llm.vision is False
    assert example.history.max_images == 4
    path = write(tmp_path, "[llm]\nvision = true\n[attachments]\nmax_side = 512\n")
    config = load_config(path, {})
    assert config.llm.vision and config.attachments.max_side == 512
    assert error_of(write(tmp_path, "[attachments]\nmax_side = 10\n")) == (
        "attachments.max_side = 10: must be a number from 64 to 8192"
    )
    assert error_of(write(tmp_path, '[llm]\nvision = "yes"\n')) == (
        "llm.vision = 'yes': must be true or false"
    )
