"""goalhorn's FCM topic management (``goalhorn.topics.fcm_admin.TopicAdmin``) against the FCM sandbox:
the IID batch API by default (1,000 tokens a request), FCM's v1 registrations API (one request a
token) when asked, and v1 once the IID endpoint is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from goalhorn.errors import ConfigError
from goalhorn.sandbox.fcm_server import FcmSandbox
from goalhorn.sandbox.fcm_topics import TokenQuota
from goalhorn.settings import Settings
from goalhorn.topics.fcm_admin import TopicAdmin


@pytest.fixture
async def fcm() -> AsyncIterator[FcmSandbox]:
    async with FcmSandbox() as sandbox:
        yield sandbox


def admin_of(fcm: FcmSandbox, tmp_path: Path, **kwargs: str) -> TopicAdmin:
    settings = Settings(fcm_credentials_file=str(fcm.service_account(tmp_path / "sa.json")), fcm_base_url=fcm.url)
    return TopicAdmin(settings, **kwargs)  # type: ignore[arg-type]


async def test_the_iid_batch_api_takes_a_thousand_tokens_a_request_and_reports_dead_ones(
    fcm: FcmSandbox, tmp_path: Path
) -> None:
    tokens = [f"tok-{n:05d}:" + "APA91b-Xy7_Qz3" * 11 for n in range(2500)]  # ~160 characters, as FCM's
    fcm.unregistered.add("tok-dead")
    admin = admin_of(fcm, tmp_path)
    try:
        added = await admin.subscribe([*tokens, "tok-dead"], "team-en")
        removed = await admin.unsubscribe(tokens[:2], "team-en")
    finally:
        await admin.aclose()
    assert sorted(added.done) == sorted(tokens)
    assert added.dead == ["tok-dead"]
    assert (added.retry, added.quota_refused) == ([], False)
    assert sorted(removed.done) == tokens[:2]
    assert fcm.topics.members("team-en") == set(tokens[2:])
    assert dict(fcm.topics.calls) == {"batchAdd": 3, "batchRemove": 1}  # 2,501 tokens: 1,000 + 1,000 + 501
    assert admin.requests == 4


async def test_the_v1_registrations_api_is_one_request_per_token(fcm: FcmSandbox, tmp_path: Path) -> None:
    admin = admin_of(fcm, tmp_path, api="v1")
    try:
        added = await admin.subscribe([f"tok-{n}" for n in range(30)], "team-en")
    finally:
        await admin.aclose()
    assert len(added.done) == 30
    assert dict(fcm.topics.calls) == {"subscribe": 30}
    assert admin.requests == 30


async def test_a_gone_iid_endpoint_means_v1_from_then_on(fcm: FcmSandbox, tmp_path: Path) -> None:
    fcm.iid_gone = True
    admin = admin_of(fcm, tmp_path)
    try:
        first = await admin.subscribe(["a", "b"], "team-en")
        second = await admin.subscribe(["c"], "team-en")
    finally:
        await admin.aclose()
    assert sorted(first.done + second.done) == ["a", "b", "c"]
    assert admin.api == "v1"
    assert dict(fcm.topics.calls) == {"batchAdd": 1, "subscribe": 3}  # the IID endpoint asked once
    assert fcm.topics.members("team-en") == {"a", "b", "c"}


def test_an_unknown_api_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'batch'"):
        TopicAdmin(Settings(fcm_project_id="p"), api="batch")  # type: ignore[arg-type]


async def test_an_iid_batch_refused_for_quota_leaves_all_its_tokens_to_retry(fcm: FcmSandbox, tmp_path: Path) -> None:
    fcm.topic_quota = TokenQuota(500)  # fewer tokens a second than one full batch carries
    admin = admin_of(fcm, tmp_path)
    try:
        refused = await admin.subscribe([f"tok-{n}" for n in range(1000)], "team-en")
    finally:
        await admin.aclose()
    assert refused.quota_refused
    assert (refused.done, len(refused.retry)) == ([], 1000)
    assert fcm.topics.members("team-en") == set()
