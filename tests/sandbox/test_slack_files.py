"""The emulator's files section: slack-sdk's files_upload_v2 and conversations.open against it.

The emulator is as strict here as for messages: the bot shares files only where it was
invited, and each method needs its scope from manifest.yml.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox.devserver import ServerThread
from bot.sandbox.slack_emulator import SlackEmulator, message_text


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SlackEmulator, ServerThread]]:
    emulator = SlackEmulator()
    with emulator.serve() as server:
        yield emulator, server


@pytest.fixture
def emulator(served: tuple[SlackEmulator, ServerThread]) -> SlackEmulator:
    emulator = served[0]
    emulator.reset()
    for channel in ("C1", "C2", "C3", "C4", "C5", "C6"):
        emulator.invite_bot(channel)  # the strict emulator: the bot posts where it was invited
    return emulator


def client(emulator: SlackEmulator) -> AsyncWebClient:
    return AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url())


async def test_files_upload_v2_shares_a_file_into_a_thread_with_its_comment(
    emulator: SlackEmulator, tmp_path: Path
) -> None:
    slack = client(emulator)
    emulator.invite_bot("C1")
    card = await slack.chat_postMessage(channel="C1", text="the card")
    path = tmp_path / "import-7-exceptions.csv"
    path.write_bytes("\ufeffReason\r\nInvalid email\r\n".encode())
    response = await slack.files_upload_v2(
        channel="C1",
        thread_ts=card["ts"],
        file=str(path),
        filename=path.name,
        title="Exceptions of import 7",
        initial_comment="*2 reasons*",
    )
    (shared,) = emulator.files.shared("C1")
    assert response["file"]["id"] == shared.id
    assert (shared.filename, shared.title, shared.thread_ts) == (
        "import-7-exceptions.csv",
        "Exceptions of import 7",
        card["ts"],
    )
    assert shared.rows() == [["Reason"], ["Invalid email"]]
    (reply,) = emulator.thread("C1", card["ts"])
    assert message_text(reply) == "*2 reasons*" and reply.ts == shared.message_ts
    assert [r.method for r in emulator.requests][-2:] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]


async def test_a_gzipped_file_reads_back_as_text(emulator: SlackEmulator) -> None:
    emulator.invite_bot("C2")
    await client(emulator).files_upload_v2(
        channel="C2", content=gzip.compress(b"a,b\r\n1,2\r\n"), filename="x.csv.gz"
    )
    (shared,) = emulator.files.shared("C2")
    assert shared.gzipped and shared.rows() == [["a", "b"], ["1", "2"]]


async def test_an_upload_never_completed_shows_nothing(emulator: SlackEmulator) -> None:
    slack = client(emulator)
    emulator.invite_bot("C3")
    started = await slack.files_getUploadURLExternal(filename="x.csv", length=3)
    assert started["upload_url"].endswith(started["file_id"])
    assert emulator.files.shared() == [] and emulator.messages("C3") == []
    with pytest.raises(SlackApiError) as caught:
        await slack.files_completeUploadExternal(
            files=[{"id": started["file_id"]}], channel_id="C3"
        )
    assert caught.value.response["error"] == "file_not_found"  # the bytes never came


async def test_files_and_direct_messages_need_their_scopes(emulator: SlackEmulator) -> None:
    slack = client(emulator)
    emulator.invite_bot("C4")
    assert emulator.scopes is not None and {"files:write", "im:write"} <= emulator.scopes
    emulator.set_scopes(emulator.scopes - {"files:write", "im:write"})
    with pytest.raises(SlackApiError) as caught:
        await slack.files_upload_v2(channel="C4", content=b"x", filename="x.csv")
    assert caught.value.response["error"] == "missing_scope"
    assert caught.value.response["needed"] == "files:write"
    with pytest.raises(SlackApiError) as opened:
        await slack.conversations_open(users="U0042")
    assert opened.value.response["error"] == "missing_scope"
    assert opened.value.response["needed"] == "im:write"
    assert emulator.files.shared() == []


async def test_conversations_open_gives_the_users_direct_message(emulator: SlackEmulator) -> None:
    slack = client(emulator)
    # The person wrote to the bot first: Slack knows the DM, and the bot is one end of it.
    emulator.ensure_channel("D0042", member="U0042")
    with pytest.raises(SlackApiError) as before:
        await slack.files_upload_v2(channel="D0042", content=b"a\r\n", filename="x.csv")
    assert before.value.response["error"] == "channel_not_found"  # not opened by the bot yet
    opened = await slack.conversations_open(users="U0042")
    assert opened["channel"]["id"] == "D0042"
    await slack.files_upload_v2(channel="D0042", content=b"a\r\n", filename="x.csv")
    assert [f.channel for f in emulator.files.shared()] == ["D0042"]
    dm = emulator.channel("D0042")
    assert dm is not None and dm.members == {"U0042", emulator.bot_user_id}


async def test_a_lost_channel_refuses_the_share(emulator: SlackEmulator) -> None:
    emulator.invite_bot("C5")
    emulator.set_channel_state("C5", "channel_not_found")
    with pytest.raises(SlackApiError) as caught:
        await client(emulator).files_upload_v2(channel="C5", content=b"x", filename="x.csv")
    assert caught.value.response["error"] == "channel_not_found"
    assert emulator.files.shared() == []
    emulator.set_channel_state("C5", None)


async def test_a_hold_point_counts_arrivals_and_waits(emulator: SlackEmulator) -> None:
    emulator.invite_bot("C6")
    emulator.files.hold("complete:after", 0.3)
    upload = asyncio.ensure_future(
        client(emulator).files_upload_v2(channel="C6", content=b"x", filename="x.csv")
    )
    await asyncio.sleep(0.15)
    # Shared already, the answer held back: the crash window the archive documents.
    assert emulator.files.reached["complete:after"] == 1
    assert len(emulator.files.shared("C6")) == 1 and not upload.done()
    await upload
    with pytest.raises(ValueError):
        emulator.files.hold("nowhere", 1)


async def test_a_channel_the_bot_was_not_invited_to_refuses_the_share(
    emulator: SlackEmulator,
) -> None:
    slack = client(emulator)
    emulator.ensure_channel("C7")  # public, the bot not in it
    emulator.ensure_channel("G7")  # private: the bot cannot even see it
    for channel, error in (("C7", "not_in_channel"), ("G7", "channel_not_found")):
        with pytest.raises(SlackApiError) as caught:
            await slack.files_upload_v2(channel=channel, content=b"x", filename="x.csv")
        assert caught.value.response["error"] == error
    assert emulator.files.shared() == []
