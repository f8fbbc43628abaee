"""Attachments over the wire: users post files on the Discord stand-in (served over HTTP),
the real bot downloads and reads them, and the LLM stand-in receives the image parts."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from PIL import Image

from bot.chat.attachments import NO_VISION_NOTE
from bot.config import Config, ModelConfig
from bot.memory.redis_server import EmbeddedRedis
from tests.harness import BotHarness, running_bot
from tests.standin.discord_models import MessageRecord
from tests.standin.llm_api import Behavior, image_urls

VISION: dict[str, dict[str, Any]] = {
    "llm": {"vision": True},
    "attachments": {
        "max_side": 512,
        "max_images": 3,
        "max_bytes": 400_000,
        "timeout_s": 1.0,
        "max_text_chars": 5000,
    },
    "history": {"max_images": 4, "retention_days": 7},
}


def png(size: tuple[int, int], color: tuple[int, ...] = (220, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB" if len(color) == 3 else "RGBA", size, color).save(out, "PNG")
    return out.getvalue()


def decoded(url: str) -> Image.Image:
    """A data URL as the model server would decode it."""
    head, _, b64 = url.partition(",")
    assert head in ("data:image/jpeg;base64", "data:image/png;base64"), head
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    assert img.format == head[len("data:image/") : -len(";base64")].upper()
    return img


def last_images(h: BotHarness) -> list[list[str]]:
    return image_urls(h.llm.chat_requests[-1].body)


def last_user_text(h: BotHarness) -> str:
    content = h.llm.chat_requests[-1].body["messages"][-1]["content"]
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content)
    return str(content)


def images_key(h: BotHarness) -> str:
    return f"e2e:{{c{h.channel}}}:images"


async def notes_for(h: BotHarness, message: MessageRecord) -> str:
    """The -# notes the bot posted after its answer to `message`."""
    note = await h.wait(
        lambda: next(
            (
                m
                for m in h.discord.bot_messages_in(message.channel_id)
                if m.referenced_message_id == message.id
                and m.content.startswith(("-# ", "I found"))
            ),
            None,
        )
    )
    return str(note.content)


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    async with running_bot(redis_server.url, overrides=VISION) as harness:
        yield harness


async def test_one_image_goes_as_a_downscaled_data_url(
    h: BotHarness, redis_client: aioredis.Redis
) -> None:
    parts = await h.ask("what is in this picture?", attachments=[("cat.png", png((2000, 1000)))])
    assert parts and parts[0].content.startswith("Echo: alice: what is in this picture?")
    (urls,) = last_images(h)
    assert len(urls) == 1 and decoded(urls[0]).size == (512, 256)
    stored = await redis_client.hgetall(images_key(h))
    assert len(stored) == 1
    ttl = await redis_client.ttl(images_key(h))
    assert 7 * 86_400 - 60 < ttl <= 7 * 86_400
    assert abs(ttl - await redis_client.ttl(f"e2e:{{c{h.channel}}}:history")) <= 1


async def test_several_images_and_the_per_message_limit(h: BotHarness) -> None:
    files = [(f"p{i}.png", png((100 + i, 50), (i * 40, 0, 0))) for i in range(5)]
    message = await h.say("compare these", attachments=files)
    await h.settle()
    (urls,) = last_images(h)
    assert [decoded(u).size for u in urls] == [(100, 50), (101, 50), (102, 50)]
    assert "I read at most 3 images per message; 2 more were skipped." in await notes_for(
        h, message
    )
    assert len(h.discord.attachment_downloads) == 3


async def test_follow_up_carries_the_image_and_older_ones_become_placeholders(
    h: BotHarness,
) -> None:
    await h.ask("look", attachments=[("car.png", png((64, 64), (0, 0, 255)))])
    await h.ask("what colour is the car?")
    first, second = last_images(h)
    assert len(first) == 1 and second == []
    assert decoded(first[0]).convert("RGB").getpixel((30, 30))[2] > 200  # type: ignore[index]
    # With history.max_images = 4, the fifth image back becomes "[image: name]".
    for i in range(4):
        await h.ask(f"and {i}", attachments=[(f"more{i}.png", png((32, 32)))])
    per_turn = last_images(h)
    assert [len(u) for u in per_turn] == [0, 0, 1, 1, 1, 1]
    user_texts = [
        m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
        for m in h.llm.chat_requests[-1].body["messages"]
        if m["role"] == "user"
    ]
    assert user_texts[0] == "alice: look\n[image: car.png]"


async def test_over_limit_corrupt_and_unsupported_files_get_notes_and_text_is_answered(
    h: BotHarness,
) -> None:
    noise = Image.effect_noise((700, 700), 100).convert("RGB")
    big = io.BytesIO()
    noise.save(big, "PNG")
    assert len(big.getvalue()) > 400_000
    message = await h.say(
        "here you go",
        attachments=[
            ("big.png", big.getvalue()),
            ("broken.png", b"\x89PNG\r\n\x1a\nthis is not really a png"),
            ("ok.png", png((20, 10))),
        ],
    )
    await h.settle()
    (urls,) = last_images(h)
    assert [decoded(u).size for u in urls] == [(20, 10)]
    assert last_user_text(h) == "alice: here you go"
    notes = await notes_for(h, message)
    assert "-# big.png is too large" in notes
    assert "-# broken.png is not an image I can read" in notes


async def test_content_type_is_not_trusted(h: BotHarness) -> None:
    await h.ask(
        "two files",
        attachments=[("screenshot", png((30, 30)), "text/plain"), ("x.txt", b"hello", "image/png")],
    )
    (urls,) = last_images(h)
    assert len(urls) == 1 and decoded(urls[0]).size == (30, 30)


async def test_slow_and_failing_downloads_get_notes(h: BotHarness) -> None:
    h.discord.add_latency(2.0, r"/attachments/.*/slow\.png")
    h.discord.fail_next("GET", r"/attachments/.*/gone\.png", 500)
    message = await h.say(
        "three pictures",
        attachments=[
            ("slow.png", png((10, 10))),
            ("gone.png", png((10, 10))),
            ("ok.png", png((8, 8))),
        ],
    )
    await h.settle()
    (urls,) = last_images(h)
    assert [decoded(u).size for u in urls] == [(8, 8)]
    notes = await notes_for(h, message)
    assert "-# slow.png took too long to download" in notes
    assert "-# gone.png could not be downloaded" in notes


async def test_text_files_huge_files_and_binary_files(h: BotHarness) -> None:
    code = b"def add(a, b):\n    return a + b\n"
    huge = ("word " * 3_000).encode()
    message = await h.say(
        "review",
        attachments=[("add.py", code), ("huge.log", huge), ("blob.dat", bytes(range(256)) * 8)],
    )
    await h.settle()
    text = last_user_text(h)
    assert text.startswith("alice: review\n\nFile `add.py`:\n```python\n" + code.decode())
    assert "File `huge.log`:" in text
    assert "[… cut: the file has 15,000 characters; only the first 5,000 were read]" in text
    notes = await notes_for(h, message)
    assert "-# huge.log is long: I read only its first 5,000 characters." in notes
    assert "-# blob.dat is not a text file or an image, so I skipped it." in notes
    # The file stays part of the conversation.
    await h.ask("and again?")
    assert "return a + b" in h.llm.chat_requests[-1].body["messages"][1]["content"][:2000]


async def test_reply_to_someone_elses_message_with_an_image(h: BotHarness) -> None:
    bob = h.discord.add_user("bob", guild_id=h.guild)
    await h.discord.flush()
    theirs = await h.say(
        "my new bike", author=bob, mention=False, attachments=[("bike.png", png((40, 20)))]
    )
    await h.settle()
    assert h.llm.chat_requests == []
    await h.ask("what do you think of it?", reference=theirs.id)
    text = last_user_text(h)
    assert text == (
        "alice: [replying to bob, who wrote:]\n> my new bike\n\nwhat do you think of it?"
    )
    (urls,) = last_images(h)
    assert [decoded(u).size for u in urls] == [(40, 20)]
    # A bare mention in a reply asks about the message replied to.
    await h.ask("", reference=theirs.id)
    assert last_user_text(h) == "alice: [replying to bob, who wrote:]\n> my new bike"
    assert len(last_images(h)[-1]) == 1
    # A reply to a message already in the conversation does not quote it again.
    mine = await h.say("remember 42")
    await h.settle()
    await h.ask("what was it?", reference=mine.id)
    assert last_user_text(h) == "alice: what was it?"
    before = len(h.llm.chat_requests)
    parts = await h.ask("", reference=mine.id)  # nothing new to read
    assert parts and parts[0].content.startswith("I found nothing to read")
    assert len(h.llm.chat_requests) == before


async def test_reset_removes_stored_images(h: BotHarness, redis_client: aioredis.Redis) -> None:
    await h.ask("keep this", attachments=[("a.png", png((10, 10)))])
    assert await redis_client.exists(images_key(h)) == 1
    record = await h.slash("reset")
    assert "forgotten" in record.content
    assert await redis_client.exists(images_key(h)) == 0
    await h.ask("anything left?")
    assert last_images(h) == [[]]


async def test_a_failed_reply_stores_no_image(h: BotHarness, redis_client: aioredis.Redis) -> None:
    h.llm.push(Behavior.error(500))
    parts = await h.ask("describe", attachments=[("a.png", png((10, 10)))])
    assert parts and "⚠️" in parts[-1].content
    assert await redis_client.exists(images_key(h)) == 0
    assert await redis_client.llen(f"e2e:{{c{h.channel}}}:history") == 0


async def test_trimmed_turns_take_their_images_with_them(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    overrides = {**VISION, "history": {"max_turns": 2, "summarize": False}}
    async with running_bot(redis_server.url, overrides=overrides) as h:
        await h.ask("one", attachments=[("a.png", png((10, 10)))])
        await h.ask("two", attachments=[("b.png", png((10, 10)))])
        assert await redis_client.hlen(images_key(h)) == 1
        await h.ask("three")
        assert await redis_client.exists(images_key(h)) == 0


async def test_turns_folded_into_the_summary_take_their_images_with_them(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    overrides = {**VISION, "history": {"max_turns": 2, "summarize": True}}
    async with running_bot(redis_server.url, overrides=overrides) as h:
        assert h.services is not None and h.services.summaries is not None
        await h.ask("one", attachments=[("a.png", png((10, 10)))])
        await h.ask("two")
        await h.services.summaries.wait_idle()
        folding = [
            r
            for r in h.llm.summary_requests
            if any("alice: one\n[image: a.png]" in str(m["content"]) for m in r.body["messages"])
        ]
        assert folding, "the summariser saw the image as a placeholder"
        assert await redis_client.exists(images_key(h)) == 0


async def test_a_model_without_vision(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        message = await h.say("what is this?", attachments=[("cat.png", png((10, 10)))])
        await h.settle()
        assert h.replies_to(message)[0].content == "Echo: alice: what is this?"
        assert last_images(h) == [[]]
        assert await notes_for(h, message) == f"-# {NO_VISION_NOTE}"
        assert h.discord.attachment_downloads == []


async def test_a_slow_download_keeps_the_channel_in_arrival_order(h: BotHarness) -> None:
    h.discord.add_latency(0.6, r"/attachments/")
    await h.say("first, with a file", attachments=[("a.txt", b"alpha")])
    await h.say("second, right after")
    await h.settle()
    first, second = h.llm.chat_requests
    assert first.body["messages"][-1]["content"].startswith("alice: first, with a file")
    assert [m["content"] for m in second.body["messages"][1:]] == [
        "alice: first, with a file\n\nFile `a.txt`:\n```\nalpha\n```",
        "Echo: alice: first, with a file\n\nFile `a.txt`:\n```\nalpha\n```",
        "alice: second, right after",
    ]


def eyes_and_blind(config: Config) -> Config:
    """Two models on the one [llm] server: one sees images, one does not."""
    return replace(
        config,
        llm=replace(config.llm, default_model="eyes"),
        models={
            "eyes": ModelConfig(model="eyes-1", context_tokens=8000, max_tokens=1000, vision=True),
            "blind": ModelConfig(model="blind-1", context_tokens=8000, max_tokens=1000),
        },
    )


async def test_vision_is_per_model(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(
        redis_server.url, overrides={"attachments": VISION["attachments"]}, configure=eyes_and_blind
    ) as h:
        await h.ask("look", attachments=[("car.png", png((64, 32)))])
        assert [len(u) for u in last_images(h)] == [1]
        await h.slash("model set", {"name": "blind"})
        await h.ask("what colour is it?")
        assert h.llm.chat_requests[-1].body["model"] == "blind-1"
        assert last_images(h) == [[], []]
        assert h.llm.chat_requests[-1].body["messages"][1]["content"] == (
            "alice: look\n[image: car.png]"
        )
        downloads = len(h.discord.attachment_downloads)
        message = await h.say("and this?", attachments=[("bike.png", png((8, 8)))])
        await h.settle()
        assert await notes_for(h, message) == f"-# {NO_VISION_NOTE}"
        assert len(h.discord.attachment_downloads) == downloads
        await h.slash("model set", {"name": "eyes"})
        await h.ask("back to the car")
        assert h.llm.chat_requests[-1].body["model"] == "eyes-1"
        assert [len(u) for u in last_images(h)] == [1, 0, 0, 0]
