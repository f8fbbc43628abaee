"""Over-the-wire tests of the Discord stand-in, driven by the real discord.py client.

They pin down that the stand-in is faithful where the bot's correctness depends on it:
login and gateway start-up, message events, Discord's validation errors, rate-limit
headers that discord.py paces itself by, 429 retries, interactions (commands, defers,
followups, modals, autocomplete), compressed transport, and resume after a drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.standin import DiscordStandIn, RateLimits

TOKEN = "test-bot-token"


def full_intents(*, message_content: bool = True) -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = True
    return intents


@pytest.fixture
async def standin() -> AsyncIterator[DiscordStandIn]:
    """A started stand-in with discord.py pointed at it for the test's duration."""
    async with DiscordStandIn(token=TOKEN) as server:
        with server.patch_discord():
            yield server


@contextlib.asynccontextmanager
async def running(client: discord.Client, ready_timeout: float = 10.0) -> AsyncIterator[Any]:
    """Run ``client`` until the block ends; fail fast if start-up raises or hangs."""
    client._connection.guild_ready_timeout = 0.1
    runner = asyncio.create_task(client.start(TOKEN))
    waiter = asyncio.create_task(client.wait_until_ready())
    try:
        done, _ = await asyncio.wait(
            {runner, waiter}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if runner in done:
            runner.result()
            raise AssertionError("client stopped before becoming ready")
        if waiter not in done:
            raise TimeoutError("client did not become ready")
        yield client
    finally:
        waiter.cancel()
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 5)


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll a client-side condition (the stand-in's own wait_for covers server state)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------
# Login, READY, guild contents
# --------------------------------------------------------------------------------------


async def test_login_ready_and_guild_visible(standin: DiscordStandIn) -> None:
    guild_id = standin.add_guild("Guild One")
    category = standin.add_category(guild_id, "Chat")
    channel_id = standin.add_channel(guild_id, "general", parent_id=category)
    thread_id = standin.add_thread(channel_id, "side-chat")
    role_id = standin.add_role(guild_id, "Helpers", permissions=1 << 13)
    user_id = standin.add_user("alice", guild_id=guild_id, roles=[role_id])

    client = discord.Client(intents=full_intents())
    async with running(client):
        guild = client.get_guild(guild_id)
        assert guild is not None and guild.name == "Guild One"
        assert guild.chunked and guild.member_count == len(guild.members) == 3
        assert guild.me is not None and client.user is not None
        assert client.user.id == standin.application_id == client.application_id
        channel = guild.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel) and channel.category_id == category
        thread = guild.get_thread(thread_id)
        assert thread is not None and thread.parent_id == channel_id
        member = guild.get_member(user_id)
        assert member is not None and [r.id for r in member.roles[1:]] == [role_id]

    identify = standin.identifies[0]
    assert identify.token == TOKEN and identify.op == 2
    assert identify.intents is not None and identify.intents & (1 << 15)
    assert standin.gateway.connection_paths[0] == "/gateway"
    assert not standin.unknown_requests()


async def test_wrong_token_is_login_failure(standin: DiscordStandIn) -> None:
    client = discord.Client(intents=full_intents())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("not-the-token")
    finally:
        await client.close()
    assert standin.requests("GET", "/users/@me")[0].status == 401


async def test_rest_responses_are_exact_json_and_unknown_routes_are_recorded(
    standin: DiscordStandIn,
) -> None:
    headers = {"Authorization": f"Bot {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{standin.api_base}/users/@me", headers=headers) as resp:
            assert resp.headers["Content-Type"] == "application/json"
            assert resp.headers["X-RateLimit-Bucket"]
            assert (await resp.json())["id"] == str(standin.application_id)
        async with http.get(f"{standin.api_base}/no/such/route", headers=headers) as resp:
            assert resp.status == 404
            assert await resp.json() == {"message": "404: Not Found", "code": 0}
    assert [r.path for r in standin.unknown_requests()] == ["/no/such/route"]


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


async def test_on_message_receives_dispatched_message_and_reply_is_recorded(
    standin: DiscordStandIn,
) -> None:
    guild_id, channel_id, user_id = standin.populate()
    seen: list[discord.Message] = []
    client = discord.Client(intents=full_intents())

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message)
        if message.author.id == user_id:
            await message.reply(f"you said {message.content}", mention_author=False)

    async with running(client):
        sent = await standin.dispatch_message(channel_id, user_id, "hello bot")
        reply = await standin.wait_for_bot_message(channel_id)
        assert reply.content == "you said hello bot"
        assert reply.referenced_message_id == sent.id and reply.type == 19
        assert reply.mentions == []  # mention_author=False reached the wire
        allowed = reply.allowed_mentions[0]
        assert allowed is not None and allowed["replied_user"] is False
        await eventually(lambda: len(seen) >= 2)  # the bot's own message comes back too
    first = seen[0]
    assert first.content == "hello bot" and first.guild is not None
    assert first.guild.id == guild_id and isinstance(first.author, discord.Member)


async def test_dm_both_directions(standin: DiscordStandIn) -> None:
    _, _, user_id = standin.populate()
    dm_id = standin.open_dm(user_id)
    client = discord.Client(intents=full_intents())
    seen: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        if message.author.id == user_id:
            seen.append(message)
            await message.author.send("dm reply")

    async with running(client):
        await standin.dispatch_message(dm_id, user_id, "psst")
        reply = await standin.wait_for_bot_message(dm_id)
    assert reply.content == "dm reply" and reply.guild_id is None
    assert isinstance(seen[0].channel, discord.DMChannel) and seen[0].content == "psst"
    assert standin.requests("POST", "/users/@me/channels")[0].status == 200


async def test_without_message_content_intent_content_is_blank_unless_mentioned(
    standin: DiscordStandIn,
) -> None:
    _, channel_id, user_id = standin.populate()
    contents: list[str] = []
    client = discord.Client(intents=full_intents(message_content=False))

    @client.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    async with running(client):
        await standin.dispatch_message(channel_id, user_id, "secret")
        await standin.dispatch_message(channel_id, user_id, f"<@{standin.bot_user.id}> hi")
        await eventually(lambda: len(contents) == 2)
    assert contents == ["", f"<@{standin.bot_user.id}> hi"]


async def test_discord_validation_errors(standin: DiscordStandIn) -> None:
    _, channel_id, _ = standin.populate()
    standin.rate_limits.enabled = False  # six sends: keep the 5-per-5-s bucket out of it
    client = discord.Client(intents=full_intents())
    async with running(client):
        channel = client.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert too_long.value.status == 400 and too_long.value.code == 50035
        assert "2000 or fewer" in str(too_long.value)

        with pytest.raises(discord.HTTPException) as big_embed:
            await channel.send(embed=discord.Embed(description="d" * 4097))
        assert big_embed.value.code == 50035

        with pytest.raises(discord.HTTPException) as empty:
            await channel.send(content="   ")
        assert empty.value.code == 50006

        ok = await channel.send("x" * 2000)
        with pytest.raises(discord.HTTPException) as empty_edit:
            await ok.edit(content="")
        assert empty_edit.value.code == 50006

        with_file = await channel.send("file", file=discord.File(__file__, filename="t.py"))
        assert with_file.attachments[0].filename == "t.py"
    assert [m.content for m in standin.bot_messages_in(channel_id)] == ["x" * 2000, "file"]
    record = standin.requests("POST", route="POST /channels/{channel_id}/messages")[-1]
    assert record.json["content"] == "file" and record.files[0][1] == "t.py"
    assert standin.count_429() == 0


# --------------------------------------------------------------------------------------
# Rate limits and faults
# --------------------------------------------------------------------------------------


async def test_rapid_edits_are_paced_by_headers_without_any_429(standin: DiscordStandIn) -> None:
    _, channel_id, _ = standin.populate()
    client = discord.Client(intents=full_intents())
    async with running(client):
        channel = client.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        message = await channel.send("draft")
        started = time.monotonic()
        for i in range(7):
            await message.edit(content=f"draft {i}")
        elapsed = time.monotonic() - started
    assert standin.count_429() == 0
    assert elapsed >= 4.9
    history = standin.message(message.id).history
    assert [h.content for h in history] == ["draft"] + [f"draft {i}" for i in range(7)]
    edits = standin.requests("PATCH")
    assert edits[0].bucket == edits[-1].bucket  # one bucket per channel
    assert standin.requests("POST")[0].bucket != edits[0].bucket  # separate from create
    # 5 edits fit in the first 5 s window; the 6th waited for the reset.
    assert edits[5].received - edits[0].received >= 4.9


async def test_forced_429_is_retried(standin: DiscordStandIn) -> None:
    _, channel_id, _ = standin.populate()
    standin.force_429(r"^/channels/\d+/messages$", count=1, retry_after=0.3)
    client = discord.Client(intents=full_intents())
    async with running(client):
        channel = client.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("after a 429")
    posts = standin.requests("POST")
    assert [p.status for p in posts] == [429, 200]
    assert posts[1].received - posts[0].received >= 0.3
    assert standin.count_429() == standin.count_429("user") == 1
    assert [m.content for m in standin.bot_messages_in(channel_id)] == ["after a 429"]


async def test_global_rate_limit_is_honoured(standin: DiscordStandIn) -> None:
    standin.rate_limits = RateLimits(global_limit=3, global_window=0.5)
    client = discord.Client(intents=full_intents())
    async with running(client):  # login used 2 of the 3 requests in this window
        users = await asyncio.gather(*(client.fetch_user(standin.owner_user.id) for _ in range(4)))
    assert {u.id for u in users} == {standin.owner_user.id}
    assert standin.count_429("global") >= 1


async def test_injected_502_on_edit_is_retried(standin: DiscordStandIn) -> None:
    _, channel_id, _ = standin.populate()
    client = discord.Client(intents=full_intents())
    async with running(client):
        channel = client.get_channel(channel_id)
        assert isinstance(channel, discord.TextChannel)
        message = await channel.send("v1")
        standin.fail_next("PATCH", r"/messages/\d+$", 502)
        await message.edit(content="v2")
    assert [r.status for r in standin.requests("PATCH")] == [502, 200]
    assert standin.message(message.id).content == "v2"


# --------------------------------------------------------------------------------------
# Interactions
# --------------------------------------------------------------------------------------


class FeedbackModal(discord.ui.Modal, title="Feedback"):
    text: discord.ui.TextInput[FeedbackModal] = discord.ui.TextInput(
        label="Your feedback", custom_id="feedback-text"
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"thanks: {self.text.value}", ephemeral=True)


def make_command_bot(guild_id: int) -> discord.Client:
    """A client with a few guild commands synced in setup_hook (before the gateway)."""
    client = discord.Client(intents=full_intents())
    tree = app_commands.CommandTree(client)
    guild = discord.Object(guild_id)

    @tree.command(name="ask", description="Ask something", guild=guild)
    async def ask(interaction: discord.Interaction, prompt: str, private: bool = False) -> None:
        await interaction.response.send_message(f"answer to {prompt}", ephemeral=private)

    @tree.command(name="slow", description="Defers, then edits", guild=guild)
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="done thinking")
        await interaction.followup.send("and a followup", ephemeral=True)

    persona = app_commands.Group(
        name="persona", description="Persona settings", guild_ids=[guild_id]
    )

    @persona.command(name="set", description="Set the persona")
    async def persona_set(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(f"persona is now {name}")  # edits the defer

    tree.add_command(persona)

    @tree.command(name="feedback", description="Opens a modal", guild=guild)
    async def feedback(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(FeedbackModal())

    @tree.command(name="model", description="Pick a model", guild=guild)
    async def model(interaction: discord.Interaction, name: str) -> None:
        await interaction.response.send_message(f"model {name}")

    @model.autocomplete("name")
    async def model_autocomplete(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = ["llama3", "llava", "mistral"]
        return [app_commands.Choice(name=n, value=n) for n in names if n.startswith(current)]

    @tree.command(name="admin", description="Moderators only", guild=guild)
    @app_commands.default_permissions(manage_guild=True)
    async def admin(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("admin ok", ephemeral=True)

    async def setup_hook() -> None:
        await tree.sync(guild=guild)

    client.setup_hook = setup_hook  # type: ignore[method-assign]
    return client


async def test_slash_commands_respond_and_are_recorded(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    async with running(make_command_bot(guild_id)):
        synced = {c["name"] for c in standin.synced_commands(guild_id)}
        assert synced == {"ask", "slow", "persona", "feedback", "model", "admin"}

        ask = await standin.invoke_slash(
            "ask", {"prompt": "life"}, channel_id=channel_id, user_id=user_id
        )
        response = await ask.wait_response()
        assert response.type == 4 and ask.content == "answer to life" and not ask.ephemeral

        private = await standin.invoke_slash(
            "ask", {"prompt": "x", "private": True}, channel_id=channel_id, user_id=user_id
        )
        await private.wait_response()
        assert private.ephemeral and private.flags & 64

        slow = await standin.invoke_slash("slow", channel_id=channel_id, user_id=user_id)
        await slow.wait_until(lambda r: len(r.followups) == 1)
        assert slow.deferred and slow.content == "done thinking"
        assert slow.original is not None and not slow.original.loading
        assert slow.followups[0].ephemeral and slow.followups[0].content == "and a followup"

        persona = await standin.invoke_slash(
            "persona set", {"name": "pirate"}, channel_id=channel_id, user_id=user_id
        )
        assert await persona.wait_content() == "persona is now pirate"
        assert persona.ephemeral and persona.followups == []  # the followup edited the defer

    # Ephemeral responses never reach the gateway; the public one did.
    public = [m for m in standin.bot_messages_in(channel_id) if not m.ephemeral]
    assert [m.content for m in public] == ["answer to life", "done thinking"]
    assert not standin.error_requests()


async def test_default_member_permissions_gate_delivery(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    async with running(make_command_bot(guild_id)):
        with pytest.raises(PermissionError):
            await standin.invoke_slash("admin", channel_id=channel_id, user_id=user_id)
        owner = await standin.invoke_slash(
            "admin", channel_id=channel_id, user_id=standin.owner_user.id
        )
        assert await owner.wait_content() == "admin ok"
        forced = await standin.invoke_slash(
            "admin", channel_id=channel_id, user_id=user_id, permissions=1 << 5
        )
        assert await forced.wait_content() == "admin ok"
        assert forced.payload["member"]["permissions"] == str(1 << 5)


async def test_second_ack_and_expired_token_are_rejected_like_discord(
    standin: DiscordStandIn,
) -> None:
    guild_id, channel_id, user_id = standin.populate()
    async with running(make_command_bot(guild_id)):
        rec = await standin.invoke_slash(
            "ask", {"prompt": "once"}, channel_id=channel_id, user_id=user_id
        )
        await rec.wait_response()
        url = f"{standin.api_base}/interactions/{rec.id}/{rec.token}/callback?with_response=1"
        webhook = f"{standin.api_base}/webhooks/{standin.application_id}/{rec.token}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"type": 4, "data": {"content": "twice"}}) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == 40060
            rec.expire()
            async with http.post(f"{webhook}?wait=true", json={"content": "late"}) as resp:
                assert resp.status == 404 and (await resp.json())["code"] == 10015
            async with http.patch(f"{webhook}/messages/@original", json={"content": "x"}) as resp:
                assert resp.status == 404 and (await resp.json())["code"] == 10015
    assert rec.content == "answer to once" and len(rec.rejected_callbacks) == 1


async def test_late_ack_gets_unknown_interaction() -> None:
    async with DiscordStandIn(token=TOKEN, ack_deadline=0.2) as server:
        with server.patch_discord():
            guild_id, channel_id, user_id = server.populate()
            async with running(make_command_bot(guild_id)):
                server.add_latency(0.3, r"/callback$")
                rec = await server.invoke_slash(
                    "ask", {"prompt": "late"}, channel_id=channel_id, user_id=user_id
                )
                await server.wait_for(
                    lambda: [r for r in server.requests("POST", "/callback") if r.status]
                )
            assert rec.callback is None
            assert server.requests("POST", "/callback")[0].response["code"] == 10062


async def test_modal_round_trip(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    async with running(make_command_bot(guild_id)):
        opened = await standin.invoke_slash("feedback", channel_id=channel_id, user_id=user_id)
        await opened.wait_response()
        assert opened.modal is not None and opened.modal["title"] == "Feedback"
        submitted = await standin.submit_modal(
            opened.modal["custom_id"],
            {"feedback-text": "great bot"},
            channel_id=channel_id,
            user_id=user_id,
        )
        assert await submitted.wait_content() == "thanks: great bot"
        assert submitted.ephemeral and submitted.type == 5


async def test_autocomplete(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    async with running(make_command_bot(guild_id)):
        rec = await standin.invoke_autocomplete(
            "model", {"name": "ll"}, "name", channel_id=channel_id, user_id=user_id
        )
        response = await rec.wait_response()
    assert response.type == 8
    assert [c["value"] for c in rec.choices or []] == ["llama3", "llava"]


async def test_unsynced_command_is_not_delivered(standin: DiscordStandIn) -> None:
    _, channel_id, user_id = standin.populate()
    with pytest.raises(LookupError):
        await standin.invoke_slash("ask", channel_id=channel_id, user_id=user_id)


# --------------------------------------------------------------------------------------
# Gateway transport, resume, sharding
# --------------------------------------------------------------------------------------


async def test_discord_py_uses_zlib_stream(standin: DiscordStandIn) -> None:
    standin.populate()
    async with running(discord.Client(intents=full_intents())):
        conns = list(standin.gateway.connections)
        assert len(conns) == 1 and conns[0].compress == "zlib-stream"


async def test_plain_json_and_zlib_gateway_by_hand(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    identify = {"op": 2, "d": {"token": TOKEN, "intents": 1 | (1 << 9) | (1 << 15)}}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{standin.gateway_url}?v=10&encoding=json") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
            await ws.send_json({"op": 1, "d": None})
            assert (await ws.receive_json(timeout=5))["op"] == 11
            await ws.send_json(identify)
            ready = await ws.receive_json(timeout=5)
            assert ready["t"] == "READY" and ready["s"] == 1
            assert ready["d"]["resume_gateway_url"] == standin.resume_gateway_url
            guild = await ws.receive_json(timeout=5)
            assert guild["t"] == "GUILD_CREATE" and guild["d"]["id"] == str(guild_id)
            await standin.dispatch_message(channel_id, user_id, "plain")
            event = await ws.receive_json(timeout=5)
            assert event["t"] == "MESSAGE_CREATE" and event["d"]["content"] == "plain"
            assert event["d"]["guild_id"] == str(guild_id) and event["d"]["member"]["roles"] == []

        url = f"{standin.gateway_url}?v=10&encoding=json&compress=zlib-stream"
        async with http.ws_connect(url) as ws:
            inflate = zlib.decompressobj()

            async def receive() -> dict[str, Any]:
                frame = await ws.receive_bytes(timeout=5)
                assert frame.endswith(b"\x00\x00\xff\xff")
                return json.loads(inflate.decompress(frame))

            assert (await receive())["op"] == 10
            await ws.send_json(identify)
            assert (await receive())["t"] == "READY"
            assert (await receive())["t"] == "GUILD_CREATE"


async def test_gateway_drop_resumes_and_replays(standin: DiscordStandIn) -> None:
    _, channel_id, user_id = standin.populate()
    contents: list[str] = []
    resumed = asyncio.Event()
    client = discord.Client(intents=full_intents())

    @client.event
    async def on_message(message: discord.Message) -> None:
        contents.append(message.content)

    @client.event
    async def on_resumed() -> None:
        resumed.set()

    async with running(client):
        await standin.dispatch_message(channel_id, user_id, "before")
        assert await standin.close_gateway(4000) == 1
        await standin.dispatch_message(channel_id, user_id, "while away")  # buffered
        await asyncio.wait_for(resumed.wait(), 10)
        await standin.dispatch_message(channel_id, user_id, "after")
        await eventually(lambda: "after" in contents)
    assert contents == ["before", "while away", "after"]
    assert [i.op for i in standin.identifies] == [2, 6]
    assert standin.gateway.connection_paths == ["/gateway", "/gateway-resume"]


async def test_autosharded_client_gets_each_guild_on_its_shard() -> None:
    async with DiscordStandIn(token=TOKEN, shard_count=2) as server:
        with server.patch_discord():
            guilds = [server.add_guild(f"g{i}") for i in range(4)]
            channel = server.add_channel(guilds[1], "general")
            user = server.add_user("bob", guild_id=guilds[1])
            client = discord.AutoShardedClient(intents=full_intents())

            async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
                return None  # discord.py sleeps 5 s between shard IDENTIFYs by default

            client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]
            got: list[tuple[int | None, str]] = []

            @client.event
            async def on_message(message: discord.Message) -> None:
                got.append((message.guild.shard_id if message.guild else None, message.content))

            async with running(client):
                assert client.shard_count == 2
                for gid in guilds:
                    guild = client.get_guild(gid)
                    assert guild is not None and guild.shard_id == (gid >> 22) % 2
                await server.dispatch_message(channel, user, "routed")
                await eventually(lambda: got)
            assert {i.shard for i in server.identifies} == {(0, 2), (1, 2)}
            assert got == [((guilds[1] >> 22) % 2, "routed")]
            routed = [e for e in server.gateway.sent if e.event == "MESSAGE_CREATE"]
            assert len(routed) == 1  # only the owning shard got it


# --------------------------------------------------------------------------------------
# Components, DMs, permissions, history, sessions shared by several bots
# --------------------------------------------------------------------------------------


class RegenerateView(discord.ui.View):
    @discord.ui.button(label="Regenerate", custom_id="regen")
    async def regen(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="regenerated", view=None)


async def test_buttons_and_user_options_in_guild_and_dm(standin: DiscordStandIn) -> None:
    _, channel_id, user_id = standin.populate()
    dm_id = standin.open_dm(user_id)
    client = discord.Client(intents=full_intents())
    tree = app_commands.CommandTree(client)

    @tree.command(name="who", description="Describe a user")
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def who(interaction: discord.Interaction, target: discord.User) -> None:
        kind = type(interaction.user).__name__
        await interaction.response.send_message(f"{kind} asks about {target.name}")

    @tree.command(name="button", description="Sends a button")
    async def button(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("click me", view=RegenerateView(timeout=5))

    async def setup_hook() -> None:
        await tree.sync()  # global commands this time

    client.setup_hook = setup_hook  # type: ignore[method-assign]
    async with running(client):
        in_guild = await standin.invoke_slash(
            "who", {"target": user_id}, channel_id=channel_id, user_id=user_id
        )
        in_dm = await standin.invoke_slash(
            "who", {"target": standin.owner_user.id}, channel_id=dm_id, user_id=user_id
        )
        assert await in_guild.wait_content() == "Member asks about alice"
        assert await in_dm.wait_content() == "User asks about app-owner"
        assert "guild_id" not in in_guild.payload["data"]  # global command
        assert in_dm.payload["context"] == 1 and "member" not in in_dm.payload

        sent = await standin.invoke_slash("button", channel_id=channel_id, user_id=user_id)
        await sent.wait_response()
        assert sent.original is not None and sent.original.components
        click = await standin.invoke_component(sent.original.id, "regen", user_id=user_id)
        assert (await click.wait_response()).type == 7
    assert sent.original.content == "regenerated" and sent.original.components == []


async def test_permissions_history_reactions_and_threads(standin: DiscordStandIn) -> None:
    guild_id, channel_id, user_id = standin.populate()
    locked = standin.add_channel(
        guild_id,
        "read-only",
        overwrites=[{"id": guild_id, "type": 0, "deny": 1 << 11}],  # @everyone: no send
    )
    client = discord.Client(intents=full_intents())
    async with running(client):
        channel = client.get_channel(channel_id)
        read_only = client.get_channel(locked)
        assert isinstance(channel, discord.TextChannel)
        assert isinstance(read_only, discord.TextChannel)
        with pytest.raises(discord.Forbidden) as denied:
            await read_only.send("hi")
        assert denied.value.code == 50013

        first = await standin.dispatch_message(channel_id, user_id, "one")
        await standin.dispatch_message(channel_id, user_id, "two")
        assert [m.content async for m in channel.history(limit=5)] == ["two", "one"]
        fetched = await channel.fetch_message(first.id)
        await fetched.add_reaction("👍")
        thread = await fetched.create_thread(name="conversation")
        await thread.send("in the thread")
    assert standin.message(first.id).reactions == {"👍": {standin.bot_user.id}}
    assert thread.id == first.id and standin.channels[thread.id].parent_id == channel_id
    assert [m.content for m in standin.bot_messages_in(thread.id)] == ["in the thread"]


async def test_invalid_session_reidentifies_and_two_bots_share_one_standin(
    standin: DiscordStandIn,
) -> None:
    _, channel_id, user_id = standin.populate()

    async def no_identify_delay(shard_id: int | None, *, initial: bool = False) -> None:
        return None  # discord.py sleeps 5 s before any non-initial IDENTIFY

    seen: dict[str, list[str]] = {"a": [], "b": []}
    clients = {}
    for name in seen:
        client = discord.Client(intents=full_intents())
        client.before_identify_hook = no_identify_delay  # type: ignore[method-assign]

        async def on_message(message: discord.Message, name: str = name) -> None:
            seen[name].append(message.content)

        client.event(on_message)
        clients[name] = client

    async with running(clients["a"]), running(clients["b"]):
        await standin.invalidate_sessions()
        await standin.wait_for(lambda: len(standin.identifies) == 4, timeout=10)
        await standin.wait_connected(count=2)
        await standin.dispatch_message(channel_id, user_id, "to both")
        await eventually(lambda: seen["a"] and seen["b"])
    assert seen == {"a": ["to both"], "b": ["to both"]}
    assert [i.op for i in standin.identifies] == [2, 2, 2, 2]
