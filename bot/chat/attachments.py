"""Attachments: images for vision models, text and code files for every model.

Why it looks like this:
- Nothing here knows Discord. A front end describes each file as a `Source` (name, the
  size and type the sender claims, and a callable that fetches the bytes); Discord's
  attachment URLs are fetched through the bot's one aiohttp session (`url_fetch`), the
  console reads local files (`file_source`).
- The claimed type is only a hint: the bytes decide. A `.png` that is not an image gets
  a note; a screenshot sent as `application/octet-stream` is still read as an image.
- Images are always re-encoded (Pillow): downscaled to a longest side, first frame only,
  EXIF rotation applied, PNG when they have transparency and JPEG otherwise. That caps
  what is stored in Redis and sent as a base64 data URL, whatever people upload.
- Every file that cannot be used becomes one short note for the person, and the text of
  the message is still answered.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import aiohttp
from PIL import Image, ImageOps

from bot.config import AttachmentsConfig

log = logging.getLogger(__name__)

NO_VISION_NOTE = "This model can't see images; I read only your text."
# Beyond this many pixels an image is refused before decoding (a "decompression bomb").
MAX_PIXELS = 50_000_000
JPEG_QUALITY = 85

# Formats read as images, by what Pillow reports for the bytes (not the file name).
IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic"}
# Fenced-block language for common code and data files (also "this is text" hints).
TEXT_EXTS = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
    ".cjs": "javascript", ".ts": "typescript", ".tsx": "tsx", ".jsx": "jsx",
    ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp",
    ".hpp": "cpp", ".cs": "csharp", ".rs": "rust", ".go": "go", ".rb": "ruby",
    ".php": "php", ".swift": "swift", ".scala": "scala", ".lua": "lua", ".sh": "bash",
    ".bash": "bash", ".zsh": "bash", ".ps1": "powershell", ".sql": "sql", ".r": "r",
    ".md": "markdown", ".txt": "", ".rst": "rst", ".json": "json", ".jsonl": "json",
    ".csv": "csv", ".tsv": "tsv", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
    ".ini": "ini", ".cfg": "ini", ".conf": "", ".env": "", ".log": "", ".xml": "xml",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".vue": "vue",
    ".svelte": "svelte", ".dart": "dart", ".zig": "zig", ".nim": "nim", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".clj": "clojure",
    ".pl": "perl", ".tex": "latex", ".diff": "diff", ".patch": "diff", ".gradle": "groovy",
    ".dockerfile": "dockerfile", ".makefile": "makefile", ".svg": "xml",
}  # fmt: skip
# Skipped without downloading: nothing in them can be read as text.
BINARY_EXTS = {
    ".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".pdf", ".doc", ".docx",
    ".xls", ".xlsx", ".ppt", ".pptx", ".odt", ".exe", ".dll", ".so", ".dylib", ".bin",
    ".iso", ".dmg", ".apk", ".jar", ".class", ".o", ".a", ".wasm", ".mp3", ".wav", ".ogg",
    ".flac", ".m4a", ".mp4", ".mov", ".mkv", ".webm", ".avi", ".ttf", ".otf", ".woff",
    ".woff2", ".psd", ".sqlite", ".db", ".pyc",
}  # fmt: skip

# Fetch the bytes, at most `limit` of them (raise `TooLarge` beyond).
Fetch = Callable[[int], Awaitable[bytes]]


class TooLarge(Exception):
    def __init__(self, size: int | None = None) -> None:
        super().__init__(size)
        self.size = size


class DownloadFailed(Exception):
    pass


class _Unreadable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Source:
    """One attached file as a front end describes it; `size` and `content_type` are claims."""

    name: str
    fetch: Fetch
    size: int | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Quoted:
    """The message someone replied to: quoted (with its files) unless already in the history."""

    message_id: int
    author: str
    text: str
    sources: list[Source] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    name: str
    mime: str
    data: bytes
    width: int
    height: int

    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass(slots=True)
class Prepared:
    """What the attachments of one message add to it."""

    images: list[PreparedImage] = field(default_factory=list)
    # Fenced blocks of the text files, ready to follow the message text.
    text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Nothing the model can read came of the attachments."""
        return not self.images and not self.text


# --- fetching ---------------------------------------------------------------------------


def url_fetch(session: aiohttp.ClientSession, url: str) -> Fetch:
    """Fetch a URL through the bot's session, stopping as soon as it passes the limit."""

    async def fetch(limit: int) -> bytes:
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise DownloadFailed(f"HTTP {resp.status}")
                if resp.content_length is not None and resp.content_length > limit:
                    raise TooLarge(resp.content_length)
                buf = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    buf += chunk
                    if len(buf) > limit:
                        raise TooLarge()
                return bytes(buf)
        except aiohttp.ClientError as exc:
            raise DownloadFailed(type(exc).__name__) from exc

    return fetch


def file_source(path: str | Path) -> Source:
    """A local file (the console's `/attach`), read like a download."""
    p = Path(path).expanduser()
    size = p.stat().st_size  # OSError for a missing file: the caller says so

    async def fetch(limit: int) -> bytes:
        if size > limit:
            raise TooLarge(size)
        return await asyncio.to_thread(p.read_bytes)

    return Source(name=p.name, fetch=fetch, size=size)


# --- reading ----------------------------------------------------------------------------


def _ext(name: str) -> str:
    ext = PurePath(name).suffix.lower()
    if not ext and name.lower() in ("dockerfile", "makefile"):
        return "." + name.lower()
    return ext


def _claims_image(src: Source) -> bool:
    return (src.content_type or "").startswith("image/") or _ext(src.name) in IMAGE_EXTS


def _claims_text(src: Source) -> bool:
    ctype = (src.content_type or "").split(";")[0].strip()
    return (
        ctype.startswith("text/")
        or ctype in ("application/json", "application/xml", "application/x-yaml")
        or _ext(src.name) in TEXT_EXTS
    )


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def is_image_bytes(data: bytes) -> bool:
    """Magic numbers of the formats people paste (supported or not)."""
    return (
        data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or data.startswith((b"II*\x00", b"MM\x00*"))
        or data[4:12] in (b"ftypheic", b"ftypheix", b"ftypavif", b"ftypmif1")
    )


def process_image(data: bytes, name: str, max_side: int) -> PreparedImage:
    """Decode, take the first frame, rotate by EXIF, downscale and re-encode."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format not in IMAGE_FORMATS:
                raise _Unreadable(f"format {opened.format}")
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise _Unreadable(f"{width}x{height} pixels")
            if opened.format == "JPEG":
                opened.draft("RGB", (max_side, max_side))  # decode at a smaller scale: faster
            opened.seek(0)
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
            alpha = img.mode in ("RGBA", "LA", "PA") or (
                img.mode == "P" and "transparency" in img.info
            )
            img = img.convert("RGBA" if alpha else "RGB")
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if alpha:
                img.save(out, "PNG", optimize=True)
                mime = "image/png"
            else:
                img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
                mime = "image/jpeg"
            return PreparedImage(name, mime, out.getvalue(), img.width, img.height)
    except _Unreadable:
        raise
    except Exception as exc:  # Pillow raises many kinds for broken files
        raise _Unreadable(type(exc).__name__) from exc


def read_text(data: bytes, *, claimed: bool) -> str | None:
    """The file as UTF-8 (bad bytes replaced), or None when it is binary."""
    head = data[:8192]
    if b"\x00" in head:
        return None
    text = data.decode("utf-8-sig", errors="replace")
    if not claimed and text[:8192].count("\ufffd") > len(head) // 20:
        return None
    return text


def fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def text_block(name: str, text: str, max_chars: int) -> tuple[str, bool]:
    """A file as a fenced block headed by its name; cut (visibly) beyond `max_chars`."""
    cut = len(text) > max_chars
    body = text[:max_chars] if cut else text
    tail = (
        f"\n[… cut: the file has {len(text):,} characters; only the first {max_chars:,} were read]"
        if cut
        else ""
    )
    marks = fence(body)
    lang = TEXT_EXTS.get(_ext(name), "")
    return f"File `{name}`:\n{marks}{lang}\n{body.rstrip()}\n{marks}{tail}", cut


def quote_block(author: str, text: str) -> str:
    """The message someone replied to, as quoted context before their own text."""
    lines = text.strip().splitlines()
    if not lines:
        return f"[replying to a message from {author}]"
    return f"[replying to {author}, who wrote:]\n" + "\n".join(f"> {line}" for line in lines)


@dataclass(slots=True)
class _Item:
    src: Source
    as_image: bool
    data: bytes | None = None
    note: str | None = None


async def prepare(
    sources: Sequence[Source], config: AttachmentsConfig, *, vision: bool
) -> Prepared:
    """Download (within the limits) and read every attachment of one message."""
    result = Prepared()
    no_vision = False
    extra_images = 0
    items: list[_Item] = []
    images_planned = 0
    for src in sources:
        if src.size is not None and src.size > config.max_bytes:
            result.notes.append(
                f"{src.name} is too large ({_megabytes(src.size)}; the limit is "
                f"{_megabytes(config.max_bytes)}), so I skipped it."
            )
            continue
        if _claims_image(src):
            if not vision:
                no_vision = True
                continue
            if images_planned >= config.max_images:
                extra_images += 1
                continue
            images_planned += 1
            items.append(_Item(src, as_image=True))
        elif _ext(src.name) in BINARY_EXTS and not _claims_text(src):
            result.notes.append(f"{src.name} is not a text file or an image, so I skipped it.")
        else:
            items.append(_Item(src, as_image=False))

    await asyncio.gather(*(_download(item, config) for item in items))

    blocks: list[str] = []
    for item in items:
        if item.note is not None:
            result.notes.append(item.note)
            continue
        data = item.data or b""
        name = item.src.name
        if item.as_image or is_image_bytes(data):
            if not vision:
                no_vision = True
                continue
            if not item.as_image:  # an image by its bytes only: it counts now
                if images_planned >= config.max_images:
                    extra_images += 1
                    continue
                images_planned += 1
            try:
                image = await asyncio.to_thread(process_image, data, name, config.max_side)
            except _Unreadable as exc:
                log.debug("attachment %s unreadable: %s", name, exc)
                result.notes.append(
                    f"{name} is not an image I can read (PNG, JPEG, WebP or GIF), so I skipped it."
                )
                continue
            result.images.append(image)
            continue
        text = read_text(data, claimed=_claims_text(item.src))
        if text is None:
            result.notes.append(f"{name} is not a text file or an image, so I skipped it.")
            continue
        block, cut = text_block(name, text, config.max_text_chars)
        blocks.append(block)
        if cut:
            result.notes.append(
                f"{name} is long: I read only its first {config.max_text_chars:,} characters."
            )
    result.text = "\n\n".join(blocks)
    if extra_images:
        result.notes.append(
            f"I read at most {config.max_images} images per message; "
            f"{extra_images} more {'was' if extra_images == 1 else 'were'} skipped."
        )
    if no_vision:
        result.notes.append(NO_VISION_NOTE)
    return result


async def _download(item: _Item, config: AttachmentsConfig) -> None:
    name = item.src.name
    try:
        async with asyncio.timeout(config.timeout_s):
            item.data = await item.src.fetch(config.max_bytes)
        if len(item.data) > config.max_bytes:
            raise TooLarge(len(item.data))
    except TooLarge as exc:
        size = f"{_megabytes(exc.size)}; " if exc.size else ""
        item.note = (
            f"{name} is too large ({size}the limit is {_megabytes(config.max_bytes)}), "
            "so I skipped it."
        )
    except TimeoutError:
        item.note = f"{name} took too long to download, so I skipped it."
    except (DownloadFailed, OSError) as exc:
        log.info("attachment download failed: %s", type(exc).__name__)
        item.note = f"{name} could not be downloaded, so I skipped it."
