"""`python -m bot chat`: talk to the bot in a terminal through the real services.

Why: an admin can check the LLM endpoint, the persona and the memory before going live
on Discord. Everything goes through the same conversation service, storage, persona
and usage code as Discord does; only the front end differs.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import zlib
from pathlib import Path
from typing import TextIO

from bot.chat import memory
from bot.chat.attachments import Source, file_source
from bot.chat.usage import summary_line
from bot.errors import BotError, user_message
from bot.models import Place, Speaker
from bot.services import Services
from bot.tools.loop import ToolStep, step_line

HELP = """Commands:
  /persona                 show the persona in use
  /persona set TEXT        set this channel's persona
  /persona preset NAME     use a preset from config
  /persona clear           back to the default
  /reset                   forget this channel's conversation (the persona stays)
  /usage                   your token use: today, 7 and 30 days
  /attach PATH             attach a local file or image to your next message
  /model                   show the model in use (and the others configured)
  /model NAME              answer with another configured model here
  /memory                  what this channel remembers: messages, what fits, the summary
  /export PATH             save the conversation as PATH.md and PATH.json
  /quit                    leave (Ctrl-D works too)"""

DIM, RESET = "\x1b[2m", "\x1b[0m"

# Console channels get ids far from Discord's snowflakes so they never collide.
CONSOLE_ID_BASE = 1 << 62


def console_place(name: str) -> Place:
    return Place(channel_id=CONSOLE_ID_BASE + zlib.crc32(name.encode()), channel_name=name)


class Console:
    def __init__(
        self,
        services: Services,
        channel: str,
        *,
        out: TextIO | None = None,
        user: str | None = None,
    ) -> None:
        self.services = services
        self.place = console_place(channel)
        name = user or getpass.getuser() or "you"
        self.speaker = Speaker(id=os.getuid() if hasattr(os, "getuid") else 0, name=name)
        self.out = out or sys.stdout
        # Files `/attach` added; they go with the next message.
        self.attached: list[Source] = []

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def run(self, lines: asyncio.Queue[str | None] | None = None) -> None:
        """Read lines (from stdin, or a queue in tests) until /quit or end of input."""
        model = (await self.services.conversations.choices.current(self.place)).spec.name
        self.say(f"Chatting in #{self.place.channel_name} with {model}. /help for commands.")
        while True:
            line = await (lines.get() if lines else _read_line("you> "))
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            try:
                if line.startswith("/"):
                    await self.command(line)
                else:
                    await self.chat(line)
            except BotError as exc:
                self.say(f"\n[!] {user_message(exc)}")
        self.say("bye")

    async def chat(self, text: str) -> None:
        self.say("bot> ", end="")
        conv = self.services.conversations
        files, self.attached = self.attached, []
        thinking = _Thinking(self)
        async with conv.reply(self.place, self.speaker, text, files=files) as reply:
            reply.on_thinking = thinking
            shown: set[int] = set()

            def steps(done: list[ToolStep]) -> None:
                for i, step in enumerate(done):
                    if step.state != "running" and i not in shown:
                        shown.add(i)
                        self.say(f"[{step_line(step).removeprefix('-# ')}] ", end="")

            reply.on_tool_steps = steps
            async for delta in reply:
                thinking.end()
                self.say(delta, end="")
        thinking.end()
        self.say()
        for note in reply.outcome.notes if reply.outcome else []:
            self.say(f"[{note}]")

    async def command(self, line: str) -> None:
        cmd, _, rest = line.partition(" ")
        sub, _, arg = rest.strip().partition(" ")
        personas = self.services.personas
        ident = self.place.channel_id
        if cmd == "/help":
            self.say(HELP)
        elif cmd == "/attach":
            path = rest.strip()
            if not path:
                names = ", ".join(s.name for s in self.attached) or "nothing"
                self.say(f"Attached to your next message: {names}. Usage: /attach PATH")
                return
            try:
                self.attached.append(file_source(path))
            except OSError as exc:
                self.say(f"Cannot attach {path}: {exc.strerror or exc}")
                return
            self.say(f"Attached {self.attached[-1].name}; it goes with your next message.")
        elif cmd == "/reset":
            removed = await self.services.conversations.reset(ident)
            self.say(f"Forgot {removed} messages. The persona stays.")
        elif cmd == "/usage":
            report = await self.services.usage.report("user", self.speaker.id)
            for label, t in (
                ("today", report.today),
                ("7 days", report.week),
                ("30 days", report.month),
            ):
                est = " (includes estimates)" if t.has_estimates else ""
                self.say(f"{label:>8}: {t.prompt:,} prompt + {t.completion:,} completion{est}")
            if report.month.summary_requests:
                self.say(f"  30 days: {summary_line(report.month)}")
            self.say(f"   chart: {report.sparkline()}")
            for name, t in report.by_model.items():
                cost = f" ≈ {report.currency}{t.cost:,.4f}" if t.cost is not None else ""
                self.say(f"  {name}: {t.total:,} tokens in 30 days{cost}")
        elif cmd == "/model":
            await self.model(rest.strip())
        elif cmd == "/memory":
            bot_name = self.services.conversations.bot_name
            self.say(memory.describe(await self.services.memory.report(self.place, bot_name)))
        elif cmd == "/export" and rest.strip():
            await self.export(rest.strip())
        elif cmd == "/persona" and sub in ("", "show"):
            current = await personas.current(self.place)
            self.say(f"[{current.source}{' preset ' + current.preset if current.preset else ''}]")
            self.say(current.text)
        elif cmd == "/persona" and sub == "set":
            await personas.set("channel", ident, arg)
            self.say("Persona set for this channel.")
        elif cmd == "/persona" and sub == "preset":
            await personas.use_preset("channel", ident, arg.strip())
            self.say(f"Using preset {arg.strip()}.")
        elif cmd == "/persona" and sub == "clear":
            await personas.clear("channel", ident)
            self.say("Persona cleared; the default applies.")
        else:
            self.say(f"Unknown command {line!r}. /help lists them.")

    async def export(self, path: str) -> None:
        bot_name = self.services.conversations.bot_name
        exported = await self.services.memory.export(self.place, bot_name)
        try:
            written = await asyncio.to_thread(_write_export, path, exported)
        except OSError as exc:
            self.say(f"[!] Could not write {exc.filename or path}: {exc.strerror or exc}")
            return
        self.say("Saved " + " and ".join(written) + ".")

    async def model(self, name: str) -> None:
        choices = self.services.conversations.choices
        if name:
            await choices.set("channel", self.place.channel_id, name)
        current = await choices.current(self.place)
        spec = current.spec
        self.say(f"Model: {spec.name} ({spec.model} via {spec.provider}; {current.source})")
        others = [n for n in choices.registry.names if n != spec.name]
        if others:
            self.say("Others: " + ", ".join(others))


def _write_export(path: str, exported: memory.Export) -> list[str]:
    """Write PATH.md and PATH.json (a .md or .json ending on PATH is dropped first)."""
    base = Path(path).expanduser()
    if base.suffix in (".md", ".json"):
        base = base.with_suffix("")
    written = []
    for suffix, text in ((".md", exported.markdown), (".json", exported.json)):
        target = base.with_name(base.name + suffix)
        target.write_text(text, encoding="utf-8")
        written.append(str(target))
    return written


class _Thinking:
    """A model's thinking in the terminal: dimmed on a terminal, else one line saying so."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.tty = console.out.isatty()
        self.open = False

    def __call__(self, piece: str) -> None:
        if self.tty:
            self.console.say(DIM + piece + RESET, end="")
        elif not self.open:
            self.console.say("(thinking...)", end="")
        self.open = True

    def end(self) -> None:
        """The answer starts: continue on a fresh `bot>` line."""
        if self.open:
            self.open = False
            self.console.say("\nbot> ", end="")


async def _read_line(prompt: str) -> str | None:
    def read() -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None

    return await asyncio.to_thread(read)
