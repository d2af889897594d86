"""Typed settings for every stage, read from ``GOALHORN_*`` environment variables.

Nothing reads the environment at import time: call :func:`load_settings` (or build a
:class:`Settings` directly in tests). A service whose URL is unset runs on the embedded default:
no ``amqp_url`` means the in-process bus and dramatiq's ``StubBroker``; no ``redis_url`` means
fakeredis.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from goalhorn.errors import ConfigError

API_KEY_SECRET_MIN = 32
"""Characters of GOALHORN_API_KEY_SECRET at least: the HMAC key API keys are stored under."""
LOCAL_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """All of goalhorn's knobs, one place."""

    model_config = SettingsConfigDict(env_prefix="GOALHORN_", frozen=True, extra="ignore")

    amqp_url: str | None = Field(default=None, description="RabbitMQ URL; unset: in-process bus")
    redis_url: str | None = Field(default=None, description="Redis URL; unset = fakeredis.")
    namespace: str = Field(
        default="goalhorn",
        pattern=r"^[a-z][a-z0-9_-]{0,39}$",
        description="Prefix of every Redis key and AMQP name, so deployments and test runs never share state.",
    )
    redis_max_connections: int = Field(default=32, ge=1)
    redis_pool_timeout_s: float = Field(default=5.0, gt=0)
    intent_prefetch: int = Field(default=32, ge=1, le=1000)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_max_delay_s: float = Field(default=10.0, gt=0)
    expand_chunk: int = Field(default=2000, ge=10, le=100_000, description="SSCAN COUNT per chunk.")
    batch_size: int = Field(default=500, ge=1, le=500)
    worker_threads: int = Field(default=8, ge=1, description="dramatiq worker threads per process.")
    critical_priority: int = Field(
        default=8,
        ge=0,
        le=10,
        description="Batches of intents at this priority or above go to the critical delivery lane (10: none).",
    )
    critical_worker_threads: int = Field(
        default=4, ge=1, description="Worker threads per deliver process that take only critical-lane batches."
    )
    normal_lane_concurrency: int = Field(
        default=32,
        ge=0,
        description="Requests in flight per provider and deliver process for the normal lane; 0: the provider's own.",
    )
    delivery_max_attempts: int = Field(default=5, ge=1)
    retry_base_delay_s: float = Field(default=0.2, gt=0)
    retry_max_delay_s: float = Field(default=30.0, gt=0)
    claim_lease_s: int = Field(
        default=10,
        ge=1,
        description="How long an in-flight delivery marker blocks a second send (renewed while its worker lives).",
    )
    sent_marker_ttl_s: int = Field(
        default=72 * 3600,
        ge=60,
        description="How long a sent marker prevents a duplicate (longer than any redelivery).",
    )
    event_dedup_ttl_s: int = Field(default=48 * 3600, ge=60)
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_connect_timeout_s: float = Field(default=2.0, gt=0)
    webhook_concurrency: int = Field(default=200, ge=1)
    webhook_endpoint_concurrency: int = Field(
        default=4, ge=1, description="Webhook requests in flight per endpoint (before a shared slot)."
    )
    webhook_slow_after_s: float = Field(
        default=0.25, gt=0, description="A webhook request unanswered this long gives its shared slot back."
    )
    webhook_slow_concurrency: int = Field(
        default=400, ge=0, description="Webhook requests in flight per process past webhook_slow_after_s."
    )
    webhook_allowlist: str = Field(
        default="",
        description="Comma-separated hosts and CIDRs a webhook may reach even though they are local or private.",
    )
    # --- segments and preferences (issue 4) ---
    rules_file: str | None = Field(
        default=None, description="YAML file of rules, segments and templates; unset: the packaged default."
    )
    preference_buckets: int = Field(
        default=16, ge=1, le=4096, description="Hashes users' devices and preferences are spread over."
    )
    bloom_enabled: bool = Field(default=True, description="Skip preference lookups for users a Bloom filter rules out.")
    bloom_error_rate: float = Field(default=0.01, gt=0, lt=0.5)
    bloom_rebuild_pending: int = Field(
        default=10_000, ge=1, description="Rebuild the Bloom filter once this many users changed preferences."
    )

    # --- ingest and fusion (issue 3) ---------------------------------------------------------
    live_state_retention_s: int = Field(
        default=48 * 3600, ge=60, description="How long a final game's live state and index entries are kept."
    )
    wp_params_path: str | None = Field(default=None, description="League win-probability parameters YAML.")
    market_map_path: str | None = Field(default=None, description="Market map YAML (token -> game, side).")
    edge_min_cents: float = Field(default=3.0, ge=0, description="Smallest edge (fair - ask, cents) signalled.")
    edge_max_book_age_s: float = Field(default=5.0, gt=0, description="A book older than this is stale.")
    edge_max_state_age_s: float = Field(default=30.0, gt=0, description="A game state older than this is stale.")
    espn_base_url: str = Field(default="https://site.api.espn.com", description="ESPN site API base URL.")
    espn_leagues: str = Field(
        default="", description="Comma-separated <sport>/<league> scoreboards to poll, e.g. hockey/nhl,soccer/usa.1."
    )
    poll_fast_s: float = Field(default=5.0, gt=0, description="Poll interval while a game of the league is live.")
    poll_slow_s: float = Field(default=30.0, gt=0, description="Poll interval otherwise.")
    poll_timeout_s: float = Field(default=10.0, gt=0)
    poll_backoff_base_s: float = Field(default=1.0, gt=0, description="First backoff after a failed poll.")
    poll_backoff_max_s: float = Field(default=60.0, gt=0)
    espn_budget_requests: int = Field(default=5000, ge=1, description="Requests to ESPN allowed per budget window.")
    espn_budget_window_s: float = Field(default=3600.0, gt=0)
    polymarket_ws_url: str = Field(default="wss://ws-subscriptions-clob.polymarket.com/ws/market")
    market_ping_s: float = Field(default=10.0, gt=0, description="PING interval on the market channel.")
    market_silence_s: float = Field(default=30.0, gt=0, description="Silence after which the channel is redialled.")

    # --- live Sportradar feeds (issue 10) ------------------------------------------------------
    sportradar_feeds: str = Field(
        default="",
        description="Comma-separated Sportradar push feed URLs (…/stream/en/events/subscribe), one stream each.",
    )
    sportradar_api_key: SecretStr | None = Field(
        default=None, description="Sportradar API key, sent as x-api-key; needed with GOALHORN_SPORTRADAR_FEEDS."
    )
    feeds_listen: str = Field(
        default="", description="host:port of the pushed-feed endpoint (POST /v1/feeds/{source}); empty: none."
    )
    feeds_secrets: SecretStr | None = Field(
        default=None, description="Per-source secrets of pushed feeds: source=hmac:SECRET or source=token:SECRET, ..."
    )
    feeds_max_bytes: int = Field(default=4 << 20, ge=1024, description="Largest pushed-feed body (413 above).")
    statsperform_matches: str = Field(
        default="", description="Comma-separated Stats Perform fixture ids whose MA3 match events are polled."
    )
    statsperform_outlet_key: SecretStr | None = Field(
        default=None, description="Stats Perform outlet authentication key; needed with GOALHORN_STATSPERFORM_MATCHES."
    )
    statsperform_base_url: str = Field(
        default="https://api.performfeeds.com/soccerdata/matchevent", description="Stats Perform MA3 root."
    )
    statsperform_budget_requests: int = Field(
        default=3600, ge=1, description="Requests to Stats Perform allowed per hour, all matches together."
    )

    # --- Live Activities: what ingest publishes (issue 15) ------------------------------------------
    live_activities: bool = Field(
        default=False,
        description="Publish a Live Activity / Android live update intent (audience live:<game id>) for every "
        "state change of every game ingest sees; the fanout sends it to the activities registered for the game.",
    )
    live_activity_high_per_hour: int = Field(
        default=12,
        ge=0,
        description="High-priority (APNs 10) Live Activity updates per match and clock hour; past it scores and "
        "cards go at priority 5 (start and end never wait). Apple's per-activity budget is undocumented: 12 an "
        "hour keeps a match's start, goals, cards and end immediate without the app being throttled.",
    )
    live_activity_tick_s: float = Field(
        default=60.0,
        gt=0,
        description="At most one clock/status tick (priority 5) per match this often, and only when the "
        "ticker's content changed.",
    )
    live_activity_dismiss_s: int = Field(
        default=900, ge=0, description="How long an ended match's Live Activity stays on the Lock Screen."
    )

    # --- providers and dispatch (issue 5) ---------------------------------------------------------
    fcm_credentials_file: str | None = Field(
        default=None, description="FCM service-account JSON; unset: the console provider stands in for FCM."
    )
    fcm_project_id: str | None = Field(default=None, description="FCM project; unset: the service account's.")
    fcm_base_url: str = Field(default="https://fcm.googleapis.com", description="FCM v1 API root (sandbox, tests).")
    fcm_concurrency: int = Field(default=100, ge=1, description="FCM requests in flight per worker process.")
    fcm_timeout_s: float = Field(default=10.0, gt=0)
    fcm_topics: bool = Field(
        default=False,
        description="Plan FCM topic sends: one message per team topic for followers without preferences, when "
        "`goalhorn topics sync` keeps the team's membership in sync.",
    )
    fcm_topic_prefix: str = Field(
        default="goalhorn-",
        pattern=r"^[a-zA-Z0-9\-_.~%]*$",
        description="Start of every FCM topic name (then the namespace, team, locale and generation).",
    )
    apns_key_file: str | None = Field(
        default=None, description="APNs token-auth key (.p8); unset: the console provider stands in for APNs."
    )
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = Field(default="", description="The app's bundle id (apns-topic).")
    apns_host: str = "api.push.apple.com"
    apns_port: int = Field(default=443, ge=1, le=65535)
    apns_ca_file: str | None = Field(default=None, description="Extra CA certificate to trust (the sandbox's).")
    apns_max_connections: int = Field(default=5, ge=1)
    apns_concurrency: int = Field(
        default=500, ge=1, description="APNs requests in flight per worker (below what the pool's streams allow)."
    )
    apns_timeout_s: float = Field(default=10.0, gt=0)
    apns_channels_host: str = Field(
        default="api-manage-broadcast.push.apple.com",
        description="APNs channel management host (broadcast channels for Live Activities; Apple's development "
        "host is api-manage-broadcast.sandbox.push.apple.com).",
    )
    apns_channels_port: int = Field(
        default=2196,
        ge=1,
        le=65535,
        description="APNs channel management port (Apple: 2196 production, 2195 development).",
    )
    breaker_failure_threshold: int = Field(
        default=20, ge=1, description="Consecutive provider-side failures that open a circuit."
    )
    breaker_open_s: float = Field(default=5.0, gt=0, description="How long an open circuit rejects before a probe.")
    fcm_rate_per_s: float = Field(default=10_000.0, ge=0, description="FCM sends/s per worker (0: unpaced).")
    apns_rate_per_s: float = Field(default=0.0, ge=0, description="APNs sends/s per worker (0: unpaced).")
    webhook_rate_per_s: float = Field(default=0.0, ge=0, description="Webhook posts/s per worker (0: unpaced).")

    # --- the sidecar API (issue 11) ----------------------------------------------------------
    api_key_secret: SecretStr | None = Field(
        default=None,
        description="Server secret API keys are stored under (HMAC-SHA-256); `run api` and `keys create` need it.",
    )
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="Largest request body (413 above).")
    api_import_max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest body of POST /v1/users:import (413 above)."
    )
    api_webhook_rotation_window_s: int = Field(
        default=24 * 3600, ge=60, description="How long a rotated webhook secret still signs (beside the new one)."
    )
    admin_api_url: str | None = Field(
        default=None, description="The sidecar the ops commands go through (as `--api URL`) instead of RabbitMQ/Redis."
    )
    admin_api_key: SecretStr | None = Field(default=None, description="An admin-scoped API key for `admin_api_url`.")

    # --- Live Activities and Android live updates: audience and channels (issue 15) ----------------
    live_activity_type: str = Field(
        default="GameActivityAttributes",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$",
        description="The ActivityKit attributes type a game's Live Activity is started as (its push-to-start tokens).",
    )
    live_registration_ttl_s: int = Field(
        default=12 * 3600,
        ge=60,
        description="How long a game's update tokens and Android registrations are kept after their last write.",
    )
    live_starts_per_user: int = Field(
        default=4,
        ge=0,
        description="Live Activity starts (push-to-start) sent to one user per GOALHORN_LIVE_START_WINDOW_S "
        "(Apple's on-device budget is about 10 in a short time); past it a user's start is skipped. 0: none.",
    )
    live_start_window_s: int = Field(default=3600, ge=60, description="The window of GOALHORN_LIVE_STARTS_PER_USER.")
    live_channels: bool = Field(
        default=True,
        description="A broadcast channel for busy games (needs GOALHORN_LIVE_ACTIVITIES and APNs); false: per token.",
    )
    live_channel_lead_s: int = Field(
        default=1800, ge=0, description="Create a game's broadcast channel this long before its scheduled start."
    )
    live_channel_min_followers: int = Field(
        default=500,
        ge=0,
        description="Followers of both teams a game needs for a channel (fewer: one batch of per-token sends does).",
    )
    live_channel_keep_s: int = Field(
        default=600,
        ge=0,
        description="How long a game's channel is kept after its end update went out on it (when the end is not "
        "seen going out: until 30 minutes after full time).",
    )
    live_channel_max: int = Field(
        default=10_000, ge=0, le=10_000, description="Channels goalhorn keeps at most (Apple's limit: 10,000 per app)."
    )
    live_channel_interval_s: float = Field(
        default=30.0, gt=0, description="How often the fanout stage looks for channels to create or delete."
    )

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL, e.g. amqp://guest:guest@127.0.0.1:5672/")
        return value

    @field_validator("api_key_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < API_KEY_SECRET_MIN:
            hint = "python -c 'import secrets; print(secrets.token_hex(32))' makes one"
            raise ValueError(f"at least {API_KEY_SECRET_MIN} characters ({hint})")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        return value

    @property
    def uses_real_services(self) -> bool:
        return self.amqp_url is not None or self.redis_url is not None

    def with_real_services(self) -> Settings:
        """The same settings pointed at the local RabbitMQ and Redis wherever a URL is unset."""
        return self.model_copy(
            update={
                "amqp_url": self.amqp_url or LOCAL_AMQP_URL,
                "redis_url": self.redis_url or LOCAL_REDIS_URL,
            }
        )


class SettingsInvalid(ConfigError):
    """Settings that do not validate; ``problems`` holds one ``GOALHORN_NAME: what`` line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def describe(exc: ValidationError) -> list[str]:
    """One line per problem, naming the environment variable (never echoing a URL that may hold a password,
    or a secret)."""
    lines = []
    for error in exc.errors():
        name = "GOALHORN_" + "_".join(str(part) for part in error["loc"]).upper()
        given = error.get("input")
        hidden = given is None or isinstance(given, dict) or any(word in name.lower() for word in ("url", "secret"))
        shown = "" if hidden else f" (got {given!r})"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {message}{shown}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top; :class:`SettingsInvalid` lists
    every bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsInvalid(describe(exc)) from None
