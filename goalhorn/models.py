"""Canonical models shared by every stage: frozen pydantic v2 models with compact JSON.

``GameState``/``GameEvent``/``BookUpdate``/``EdgeSignal`` come out of ingest; ``Intent`` is what
travels on the intent bus; ``Device`` is a recipient endpoint; ``DeliveryBatch`` is at most 500
devices of one provider carrying their intent (``EncodedBatch`` is its wire form); ``DeliveryResult``
is one device's outcome.
Timestamps are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from goalhorn.keys import Platform

MAX_BATCH = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    """Base of the canonical models: immutable, strict about unknown fields, compact on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        """Compact JSON (no whitespace, no null fields)."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        return cls.model_validate_json(data)


class Sport(enum.StrEnum):
    SOCCER = "soccer"
    HOCKEY = "hockey"
    BASKETBALL = "basketball"
    FOOTBALL = "football"
    BASEBALL = "baseball"


class GameStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    FINAL = "final"


class EventKind(enum.StrEnum):
    GOAL = "GOAL"
    TOUCHDOWN = "TOUCHDOWN"
    FIELD_GOAL = "FIELD_GOAL"
    SAFETY = "SAFETY"
    EXTRA_POINT = "EXTRA_POINT"
    TWO_POINT_CONVERSION = "TWO_POINT_CONVERSION"
    RUN = "RUN"
    BASKET = "BASKET"
    SCORE = "SCORE"
    SCORE_CORRECTION = "SCORE_CORRECTION"
    RED_CARD = "RED_CARD"
    GAME_START = "GAME_START"
    PERIOD_END = "PERIOD_END"
    HALFTIME = "HALFTIME"
    GAME_END = "GAME_END"
    EDGE = "EDGE"
    LIVE_UPDATE = "LIVE_UPDATE"
    """A Live Activity / Android live update of a game's score ticker with no event of its own (a clock or
    status tick); built by ingest (``goalhorn.intents.liveactivity``), never by a catalog rule."""


SCORING_KINDS = frozenset(
    {
        EventKind.GOAL,
        EventKind.TOUCHDOWN,
        EventKind.FIELD_GOAL,
        EventKind.SAFETY,
        EventKind.EXTRA_POINT,
        EventKind.TWO_POINT_CONVERSION,
        EventKind.RUN,
        EventKind.BASKET,
        EventKind.SCORE,
    }
)
"""The kinds of event that change a score (a correction takes one back)."""


class GameState(Model):
    """One game as a feed saw it at ``observed_at``."""

    game_id: str
    source: str
    sport: Sport
    league: str
    status: GameStatus
    status_detail: str = ""
    home_team: str
    away_team: str
    home_team_id: str
    away_team_id: str
    home_score: int = Field(ge=0)
    away_score: int = Field(ge=0)
    period: int = Field(ge=0)
    clock_s: float | None = None
    display_clock: str = ""
    start_time: datetime | None = None
    observed_at: datetime


class GameEvent(Model):
    """Something that happened in a game; ``event_id`` is the same on every re-poll of it."""

    event_id: str
    kind: EventKind
    source: str
    game_id: str
    sport: Sport
    league: str
    team_id: str | None = None
    team: str | None = None
    home_team: str
    away_team: str
    home_score: int
    away_score: int
    period: int
    display_clock: str = ""
    player: str | None = None
    sequence: int | None = None
    clock_s: float | None = None
    """The game clock in seconds as the feed gave it (remaining in the period where it counts down)."""
    home_score_before: int | None = None
    """The scores just before the event, where the feed made them known (rule conditions use them)."""
    away_score_before: int | None = None
    observed_at: datetime


class BookUpdate(Model):
    """Top of a market's book after a change."""

    token_id: str
    best_bid: float | None = None
    best_ask: float | None = None
    ts_ms: int
    received_at: datetime


class EdgeSignal(Model):
    """A market priced away from the model's fair value, with how fresh both inputs were."""

    token_id: str
    game_id: str
    side: str
    fair: float = Field(ge=0, le=1)
    ask: float = Field(ge=0, le=1)
    edge_cents: float
    book_age_s: float = Field(ge=0)
    state_age_s: float = Field(ge=0)
    created_at: datetime


class Intent(Model):
    """A compact "notify these segments about this event" message; a typical one is < 1 KiB."""

    intent_id: str
    event_id: str
    kind: EventKind
    sport: Sport
    game_id: str
    team_id: str | None = None
    priority: Annotated[int, Field(ge=0, le=9)]
    segments: tuple[str, ...] = Field(min_length=1)
    template: str
    data: dict[str, str] = Field(default_factory=dict)
    collapse_key: str | None = None
    event_at: datetime
    created_at: datetime
    expires_at: datetime
    bypass_quiet_hours: bool = False
    opt_in_required: bool = False

    @model_validator(mode="after")
    def _expiry_after_creation(self) -> Self:
        if self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        return self

    def expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at


class Device(Model):
    """One endpoint of one user: an FCM or APNs token, or a webhook URL with its signing secret.

    ``platform`` comes first, so its compact JSON starts with ``{"platform":"<platform>"``: the
    expander tells stored devices apart by that prefix without parsing them."""

    platform: Platform
    device_id: str
    user_id: str
    address: str = Field(min_length=1, description="FCM/APNs token, or webhook URL.")
    secret: str | None = Field(default=None, description="whsec_ secret of a webhook endpoint.")
    locale: str = "en"
    added_at: datetime | None = None

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Self:
        if self.platform == "webhook" and not self.secret:
            raise ValueError("a webhook device needs a signing secret")
        return self


class DeliveryBatch(Model):
    """Up to 500 devices of one provider, with the intent they are to receive."""

    batch_id: str
    platform: Platform
    intent: Intent
    devices: tuple[Device, ...] = Field(min_length=1, max_length=MAX_BATCH)
    attempt: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_platform(self) -> Self:
        wrong = [d.device_id for d in self.devices if d.platform != self.platform]
        if wrong:
            raise ValueError(f"devices {wrong[:3]} are not {self.platform} devices")
        return self

    def encode(self) -> EncodedBatch:
        return EncodedBatch(self.batch_id, self.platform, self.intent.priority, len(self.devices), self.to_json())


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A delivery batch as it travels to its provider's queue: the compact JSON of a ``DeliveryBatch``
    and what routing it needs. The expander writes it from stored device JSON without parsing that
    (``goalhorn.segmenter.batches``); the delivery worker validates it on the way in."""

    batch_id: str
    platform: Platform
    priority: int
    size: int
    payload: bytes

    def decode(self) -> DeliveryBatch:
        return DeliveryBatch.from_json(self.payload)


Outcome = Literal["sent", "failed", "invalid_token", "expired", "suppressed"]
"""What happened to one device of a batch (``DeliveryResult.outcome``)."""
DeliveryCount = Literal["sent", "failed", "invalid_token", "expired", "suppressed", "dead_lettered", "superseded"]
"""Where a device of a batch ended, as counted per provider (``delivery:<platform>:<count>``): an
outcome, the dead letters, or ``superseded`` (not sent: a strictly newer intent with the same
collapse key was already sent or claimed for the device)."""
DELIVERY_COUNTS: tuple[DeliveryCount, ...] = get_args(DeliveryCount)
DispatchCount = Literal[
    "batches_done",
    "batches_published",
    "duplicates_skipped",
    "tokens_removed",
    "tokens_kept_reregistered",
    "held_requeued",
    "breaker_deferred",
    "retries",
    "dead_letters",
    "quarantined_batches",
    "quarantined_devices",
    "failed_batches",
    "dlq_replayed",
]
"""The shared counters the delivery side keeps besides ``delivery:<platform>:<count>``."""
ActorFailureOutcome = Literal["redis_wait", "paused", "retried", "dead_lettered", "left_in_xq"]
"""What became of a delivery message whose actor raised: the ``outcome`` label of
``goalhorn_delivery_failures_total`` (``goalhorn.dispatch.failures``)."""


class DeliveryResult(Model):
    """What happened to one device of a batch."""

    device_id: str
    outcome: Outcome
    retryable: bool = False
    reason: str | None = None
    retry_after: float | None = None
    provider_message_id: str | None = None
    invalid_since: datetime | None = Field(
        default=None, description="For invalid_token: since when the provider says so (APNs 410 timestamp)."
    )
    message_error: bool = Field(
        default=False,
        description="For failed: the message could not be built for this device (its template does not render), "
        "so nothing reached the provider; neither the device's nor the provider's fault, and no retry helps.",
    )
    refused: bool = Field(
        default=False,
        description="For failed: refused before anything was sent (a webhook URL the SSRF guard refuses, an "
        "unusable URL or secret); not retried, and the circuit breaker learns nothing from it.",
    )
    maybe_sent: bool = Field(
        default=False,
        description="For a retryable failure: the request was written but its answer was lost (a timeout, the "
        "connection closed under it), so the provider may have accepted it. Its claim is kept until its lease "
        "runs out, so no other copy of the batch sends it meanwhile, and its retry waits for that lease.",
    )

    @model_validator(mode="after")
    def _only_failures_retry(self) -> Self:
        if self.retryable and self.outcome != "failed":
            raise ValueError("only a failed delivery can be retryable")
        if (self.message_error or self.refused) and (self.outcome != "failed" or self.retryable):
            raise ValueError("a message error or a refused request is a failure that no retry fixes")
        if self.maybe_sent and not self.retryable:
            raise ValueError("only a retryable failure can be an answer lost")
        return self


class DeadLetterKind(enum.StrEnum):
    """What a dead-letter entry holds (its payload field has the same name)."""

    BATCH = "batch"
    """Devices of a batch, as a ``DeliveryBatch``, that no further try would deliver."""
    DEVICE = "device"
    """One device's JSON cut out of a batch because it is invalid."""
    MESSAGE = "message"
    """A delivery message unreadable as a whole, as it was queued."""


class DeadLetterCode(enum.StrEnum):
    """Why an entry is in the dead letters."""

    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    """Retryable failures on every one of ``GOALHORN_DELIVERY_MAX_ATTEMPTS`` attempts."""
    MESSAGE_ERROR = "message_error"
    """The message could not be built for these devices (a template that does not render, a message
    the provider's library refuses): no retry fixes it."""
    WORKER_FAILED = "worker_failed"
    """The worker itself raised on every try (a bug, a provider that cannot be built)."""
    INVALID_DEVICE = "invalid_device"
    """A device of the batch failed validation; the rest of the batch was delivered."""
    INVALID_BATCH = "invalid_batch"
    """The message is not a readable delivery batch."""


DEAD_LETTER_KINDS: dict[DeadLetterCode, DeadLetterKind] = {
    DeadLetterCode.ATTEMPTS_EXHAUSTED: DeadLetterKind.BATCH,
    DeadLetterCode.MESSAGE_ERROR: DeadLetterKind.BATCH,
    DeadLetterCode.WORKER_FAILED: DeadLetterKind.MESSAGE,
    DeadLetterCode.INVALID_DEVICE: DeadLetterKind.DEVICE,
    DeadLetterCode.INVALID_BATCH: DeadLetterKind.MESSAGE,
}
"""The kind of entry each code writes. A worker failure keeps the message as it was queued: the
failure may be in reading it."""


class DeadLetter(Model):
    """One entry of the dead-letter stream (``Keys.dead_letters``): a closed ``code`` with a
    ``detail`` for people (the stream field ``reason``), and what is needed to find and replay it."""

    kind: DeadLetterKind
    code: DeadLetterCode
    detail: str = ""
    platform: Platform
    payload: str = Field(description="The batch, device or message JSON, per ``kind``.")
    batch_id: str | None = None
    intent_id: str | None = None
    devices: int = Field(default=0, ge=0, description="How many devices the entry holds (0: unknown).")
    at: datetime | None = Field(default=None, description="When it was written (the stream id's time).")
    entry_id: str | None = Field(default=None, description="The stream id, once read.")

    @model_validator(mode="after")
    def _kind_matches_code(self) -> Self:
        if DEAD_LETTER_KINDS[self.code] is not self.kind:
            raise ValueError(f"a {self.code} dead letter is a {DEAD_LETTER_KINDS[self.code]} entry, not {self.kind}")
        return self

    def fields(self) -> dict[str, str]:
        """The stream entry's fields: the payload under the kind's name, the rest as strings."""
        out = {"kind": str(self.kind), "code": str(self.code), "reason": self.detail, "platform": self.platform}
        out[str(self.kind)] = self.payload
        if self.batch_id is not None:
            out["batch_id"] = self.batch_id
        if self.intent_id is not None:
            out["intent_id"] = self.intent_id
        out["devices"] = str(self.devices)
        return out

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> DeadLetter:
        """An entry read back from the stream; raises ``ValueError`` on one written by another version."""
        kind = DeadLetterKind(fields.get("kind", ""))
        ms = int(entry_id.split("-", 1)[0])
        return cls(
            kind=kind,
            code=DeadLetterCode(fields.get("code", "")),
            detail=fields.get("reason", ""),
            platform=fields.get("platform", ""),  # validated by pydantic
            payload=fields[str(kind)],
            batch_id=fields.get("batch_id"),
            intent_id=fields.get("intent_id"),
            devices=int(fields.get("devices", "0")),
            at=datetime.fromtimestamp(ms / 1000, UTC),
            entry_id=entry_id,
        )
