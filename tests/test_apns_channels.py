"""APNs broadcast channel management (goalhorn.providers.apns_channels) against the sandbox's
channel management listener, over real HTTP/2 + TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from goalhorn.errors import ChannelLimitReached, ChannelRejected, ProviderAuthError, ProviderUnavailable
from goalhorn.providers.apns_channels import TOKEN_RENEW_S, ApnsChannels, ProviderToken
from goalhorn.sandbox.apns_server import CHANNEL_LIMIT, ApnsSandbox, Channel
from tests.support.apns_sandbox import apns_settings


@pytest.fixture
async def sandbox(tmp_path: Path):
    async with ApnsSandbox(tmp_path) as server:
        yield server


async def test_create_read_list_delete(sandbox) -> None:
    async with ApnsChannels(apns_settings(sandbox)) as channels:
        first = await channels.create()
        second = await channels.create(storage=1)
        assert first != second
        assert sorted(await channels.list()) == sorted([first, second])
        assert await channels.read(first) == {"message-storage-policy": 0, "push-type": "LiveActivity"}
        assert (await channels.read(second) or {})["message-storage-policy"] == 1
        assert await channels.delete(first) is True
        assert await channels.delete(first) is False  # APNs no longer knows it
        assert await channels.read(first) is None
        assert await channels.list() == [second]
    assert set(sandbox.channels) == {second}
    assert sandbox.management_calls == {"create": 2, "list": 2, "read": 2, "delete": 1}  # answered ones


async def test_the_management_host_is_its_own(sandbox) -> None:
    """Channel requests go to apns_channels_host:port: sent to the push port they are refused (BadPath),
    as Apple's push host refuses them."""
    settings = apns_settings(sandbox).model_copy(update={"apns_channels_port": sandbox.port})
    async with ApnsChannels(settings) as channels:
        with pytest.raises(ChannelRejected) as refused:
            await channels.create()
        with pytest.raises(ChannelRejected) as listed:
            await channels.list()
    assert (refused.value.status, refused.value.reason) == (404, "BadPath")
    assert (listed.value.status, listed.value.reason) == (405, "MethodNotAllowed")
    assert not sandbox.channels


async def test_limit_of_ten_thousand_channels(sandbox) -> None:
    """The 10,000th channel is created, the next refused with CannotCreateChannelConfig; deleting one
    makes room again."""
    async with ApnsChannels(apns_settings(sandbox)) as channels:
        for n in range(CHANNEL_LIMIT - 1):  # the app already holds 9,999 (filled directly, not 9,999 requests)
            sandbox.channels[f"ZmlsbGVy{n:08d}"] = Channel(0, set())
        last = await channels.create()
        assert len(sandbox.channels) == CHANNEL_LIMIT
        with pytest.raises(ChannelLimitReached) as refused:
            await channels.create()
        assert refused.value.reason == "CannotCreateChannelConfig"
        assert not refused.value.retryable
        assert len(await channels.list()) == CHANNEL_LIMIT
        assert await channels.delete(last)
        await channels.create()


async def test_untrusted_key_is_an_auth_error(sandbox) -> None:
    async with ApnsChannels(apns_settings(sandbox, "UNTRUSTED", trusted=False)) as channels:
        with pytest.raises(ProviderAuthError):
            await channels.create()
    assert not sandbox.channels


async def test_outage_and_no_server_are_unavailable(sandbox) -> None:
    settings = apns_settings(sandbox)
    async with ApnsChannels(settings) as channels:
        sandbox.unavailable_for(5)
        with pytest.raises(ProviderUnavailable):
            await channels.create()
    await sandbox.stop()
    async with ApnsChannels(settings) as channels:
        with pytest.raises(ProviderUnavailable):
            await channels.list()


async def test_bad_channel_id_and_bad_storage_policy(sandbox) -> None:
    async with ApnsChannels(apns_settings(sandbox)) as channels:
        assert await channels.read("not a channel id!") is None  # BadChannelId: APNs cannot know it
        with pytest.raises(ChannelRejected) as refused:
            await channels.create(storage=2)  # type: ignore[arg-type]
    assert refused.value.reason == "BadMessageStoragePolicy"


def test_provider_token_is_reused_then_renewed(sandbox) -> None:
    """One token for every request until TOKEN_RENEW_S (under Apple's hour), then a new one it accepts."""
    token = ProviderToken(sandbox.signing_key("KEYT").read_text(), "KEYT", sandbox.team_id)
    first = token.bearer()
    assert token.bearer() == first
    assert sandbox._check_token(first) is None
    token._issued -= TOKEN_RENEW_S - 5
    assert token.bearer() == first  # still young enough
    token._issued -= 10
    renewed = token.bearer()
    assert renewed != first
    assert sandbox._check_token(renewed) is None
