"""Reading attachments: pure logic (sniffing, Pillow re-encoding, text blocks, notes)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from bot.chat.attachments import (
    NO_VISION_NOTE,
    Source,
    TooLarge,
    fence,
    file_source,
    is_image_bytes,
    prepare,
    process_image,
    quote_block,
    read_text,
    text_block,
)
from bot.config import AttachmentsConfig

CFG = AttachmentsConfig(max_bytes=2_000_000, max_images=2, timeout_s=0.5, max_side=256)


def image_bytes(
    size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB", color: object = (200, 30, 30)
) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt)  # type: ignore[arg-type]
    return out.getvalue()


def src(name: str, data: bytes, ctype: str | None = None, *, delay: float = 0.0) -> Source:
    async def fetch(limit: int) -> bytes:
        await asyncio.sleep(delay)
        if len(data) > limit:
            raise TooLarge(len(data))
        return data

    return Source(name, fetch, len(data), ctype)


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "want_mime", "want_size"),
    [
        ("PNG", "RGB", (1000, 500), "image/jpeg", (256, 128)),
        ("PNG", "RGBA", (300, 600), "image/png", (128, 256)),
        ("JPEG", "RGB", (2000, 2000), "image/jpeg", (256, 256)),
        ("WEBP", "RGB", (100, 80), "image/jpeg", (100, 80)),  # small: not upscaled
        ("GIF", "P", (640, 320), "image/jpeg", (256, 128)),
    ],
)
def test_images_are_downscaled_and_reencoded(
    fmt: str, mode: str, size: tuple[int, int], want_mime: str, want_size: tuple[int, int]
) -> None:
    color: object = 5 if mode == "P" else (10, 200, 30, 128)[: len(mode)]
    data = image_bytes(size, fmt, mode, color)
    assert is_image_bytes(data)
    out = process_image(data, "x", 256)
    assert out.mime == want_mime
    img = decode(out.data)
    assert img.size == want_size == (out.width, out.height)
    assert img.format == want_mime.split("/")[1].upper()


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (50, 50), c) for c in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    img = decode(process_image(out.getvalue(), "anim.gif", 256).data).convert("RGB")
    r, _g, b = img.getpixel((25, 25))  # type: ignore[misc]
    assert r > 200 and b < 50


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (200, 100))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    out = io.BytesIO()
    img.save(out, "JPEG", exif=exif)
    assert decode(process_image(out.getvalue(), "p.jpg", 256).data).size == (100, 200)


async def test_prepare_reads_images_and_text_files_in_order() -> None:
    prepared = await prepare(
        [
            src("shot.png", image_bytes((800, 400))),
            src("main.py", b"print('hi')\n"),
            src("notes.txt", "caf\xe9 ok".encode() + b"\xff bad byte"),
        ],
        CFG,
        vision=True,
    )
    assert prepared.notes == []
    assert [(i.name, i.width, i.height) for i in prepared.images] == [("shot.png", 256, 128)]
    assert prepared.text.startswith("File `main.py`:\n```python\nprint('hi')\n```")
    assert "File `notes.txt`:\n```\ncafé ok\ufffd bad byte\n```" in prepared.text


async def test_content_type_is_a_hint_the_bytes_decide() -> None:
    png = image_bytes((40, 40))
    prepared = await prepare(
        [
            src("screenshot", png, "application/octet-stream"),  # an image all the same
            src("fake.png", b"not an image at all", "image/png"),
            src("data.bin.txt", b"\x00\x01\x02\x03binary", "text/plain"),
        ],
        CFG,
        vision=True,
    )
    assert [i.name for i in prepared.images] == ["screenshot"]
    assert prepared.text == ""
    assert prepared.notes == [
        "fake.png is not an image I can read (PNG, JPEG, WebP or GIF), so I skipped it.",
        "data.bin.txt is not a text file or an image, so I skipped it.",
    ]


async def test_limits_give_notes_and_skip_downloads() -> None:
    fetched: list[str] = []

    def tracked(name: str, data: bytes, size: int | None = None) -> Source:
        async def fetch(limit: int) -> bytes:
            fetched.append(name)
            if len(data) > limit:
                raise TooLarge(len(data))
            return data

        return Source(name, fetch, size, None)

    big = b"x" * 3_000_000
    png = image_bytes((30, 30))
    prepared = await prepare(
        [
            tracked("huge.log", big, len(big)),  # claimed size: not even downloaded
            tracked("liar.log", big, 10),  # claims to be small: the download stops it
            tracked("a.png", png),
            tracked("b.png", png),
            tracked("c.png", png),
            tracked("archive.zip", b"PK\x03\x04"),
        ],
        CFG,
        vision=True,
    )
    assert sorted(fetched) == ["a.png", "b.png", "liar.log"]
    assert len(prepared.images) == 2
    assert prepared.notes == [
        "huge.log is too large (3.0 MB; the limit is 2.0 MB), so I skipped it.",
        "archive.zip is not a text file or an image, so I skipped it.",
        "liar.log is too large (3.0 MB; the limit is 2.0 MB), so I skipped it.",
        "I read at most 2 images per message; 1 more was skipped.",
    ]


async def test_a_slow_download_times_out_the_others_still_count() -> None:
    prepared = await prepare(
        [src("slow.txt", b"late", delay=5), src("fast.txt", b"early")], CFG, vision=True
    )
    assert prepared.notes == ["slow.txt took too long to download, so I skipped it."]
    assert "early" in prepared.text and "late" not in prepared.text


async def test_without_vision_images_are_not_downloaded_one_note() -> None:
    prepared = await prepare(
        [src("a.png", b"never fetched", delay=5), src("b.jpg", b"nor this", delay=5)],
        CFG,
        vision=False,
    )
    assert prepared.empty and prepared.notes == [NO_VISION_NOTE]


async def test_huge_text_file_is_cut_visibly() -> None:
    cfg = AttachmentsConfig(max_text_chars=1000)
    prepared = await prepare([src("big.md", b"a" * 5000)], cfg, vision=False)
    assert "\n" + "a" * 1000 + "\n```\n" in prepared.text
    assert "[… cut: the file has 5,000 characters; only the first 1,000 were read]" in (
        prepared.text
    )
    assert prepared.notes == ["big.md is long: I read only its first 1,000 characters."]


def test_read_text_spots_binary() -> None:
    assert read_text(b"hello\x00world", claimed=True) is None
    assert read_text(bytes(range(128, 256)) * 4, claimed=False) is None
    assert read_text(b"\xef\xbb\xbfwith bom", claimed=False) == "with bom"


def test_quote_block() -> None:
    assert quote_block("bob", "line one\nline two") == (
        "[replying to bob, who wrote:]\n> line one\n> line two"
    )
    assert quote_block("bob", "  ") == "[replying to a message from bob]"


async def test_file_source_reads_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "hello.rs"
    path.write_text("fn main() {}")
    prepared = await prepare([file_source(path)], CFG, vision=False)
    assert prepared.text == "File `hello.rs`:\n```rust\nfn main() {}\n```"
    with pytest.raises(OSError):
        file_source(tmp_path / "missing.txt")


@given(st.text(alphabet=st.sampled_from("`ab\n "), max_size=60))
def test_fence_never_closes_inside_the_text(text: str) -> None:
    block, _ = text_block("f.txt", text, 10_000)
    marks = fence(text.rstrip())
    body = block.split("\n", 2)[2]
    assert body.endswith("\n" + marks)
    inner = body[: -len(marks) - 1]
    assert marks not in inner
    assert inner == text.rstrip()


def test_context_counts_each_sent_image_and_uses_placeholders_for_the_rest() -> None:
    from bot.chat.context import build_context
    from bot.llm.tokens import TokenCounter
    from bot.models import ImageRef, Turn

    counter = TokenCounter()

    def user(text: str, *refs: ImageRef) -> Turn:
        return Turn("user", text, counter.count("bob: " + text), 0.0, 1, "bob", images=refs)

    a, b = ImageRef("a", "a.png", "image/png"), ImageRef("b", "b.png", "image/jpeg")
    history = [user("old", a), Turn("assistant", "ok", 1, 0.0)]
    new = user("new", b)
    data = {"a": "QUFB", "b": "QkJC"}
    kw: dict[str, object] = {"context_tokens": 3000, "reply_tokens": 500, "counter": counter}
    both = build_context("S", history, new, images=data, image_tokens=500, **kw)  # type: ignore[arg-type]
    assert both.history_used == 2
    assert [p["type"] for p in both.messages[-1]["content"]] == ["text", "image_url"]
    assert both.messages[-1]["content"][1]["image_url"]["url"] == "data:image/jpeg;base64,QkJC"
    assert counter.count_messages(both.messages) + 1000 == both.prompt_tokens
    # Only the newest image is sent: the older one is a placeholder and costs no image.
    one = build_context("S", history, new, images={"b": "QkJC"}, image_tokens=500, **kw)  # type: ignore[arg-type]
    assert one.messages[1] == {"role": "user", "content": "bob: old\n[image: a.png]"}
    assert counter.count_messages(one.messages) + 500 == one.prompt_tokens
    # An older image that does not fit the budget becomes a placeholder; the new one stays.
    tight = build_context("S", history, new, images=data, image_tokens=1500, **kw)  # type: ignore[arg-type]
    assert tight.history_used == 2
    assert tight.messages[1] == {"role": "user", "content": "bob: old\n[image: a.png]"}
    assert counter.count_messages(tight.messages) + 1500 == tight.prompt_tokens
