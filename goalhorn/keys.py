"""Every Redis key and AMQP name goalhorn uses, built in one place.

All names start with the namespace (``Settings.namespace``), so two deployments or two test runs
can share one Redis and one RabbitMQ without seeing each other. Redis keys use ``:`` and AMQP names
use ``.`` as separators. Keys an operation touches together share a ``{...}`` hash tag so the same
layout works on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Platform = Literal["fcm", "apns", "webhook"]
PLATFORMS: tuple[Platform, ...] = ("fcm", "apns", "webhook")
Lane = Literal["normal", "critical"]
"""A provider's delivery queues are split by intent priority into lanes (``goalhorn.dispatch.lanes``)."""
LANES: tuple[Lane, ...] = ("normal", "critical")
GAME_KEY_PATTERN = r"^[a-z0-9_-]{1,40}:[!-~]{1,128}$"
"""A game's key, ``<source>:<feed's game id>`` (``espn:401461455``): how the API, the live state and Live
Activities name a game (two feeds number games differently)."""


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and queue names of one namespace."""

    namespace: str

    # --- Redis: audience --------------------------------------------------------------------
    def team_followers(self, team_id: str) -> str:
        """SET of user ids following a team."""
        return f"{self.namespace}:team:{team_id}:followers"

    # --- Redis: ingest ------------------------------------------------------------------------
    def event_seen(self, event_id: str) -> str:
        """STRING: a claim (``SET NX`` with a lease, naming its holder) while an event's intents are being
        published, then ``done`` once the broker confirmed them."""
        return f"{self.namespace}:event:{event_id}:seen"

    def game_state(self, game_key: str) -> str:
        """HASH ``state`` (GameState JSON), ``observed_at_ms``, ``updated_at_ms`` of one game.

        ``game_key`` is ``<source>:<game id>`` (see ``goalhorn.ingest.live``); every live-state key
        shares the ``{live}`` hash tag, as one script writes a game's state and its indexes.
        """
        return f"{self.namespace}:{{live}}:game:{game_key}"

    # --- Redis: delivery ----------------------------------------------------------------------
    def delivery_marker(self, intent_id: str, device_id: str) -> str:
        """STRING "inflight:<ts>" or "sent" per (intent, device)."""
        return f"{self.namespace}:dlv:{{{intent_id}}}:{device_id}"

    def newest_intent(self, collapse_key: str, device_id: str) -> str:
        """STRING: the event time (microseconds) of the newest intent with ``collapse_key`` claimed for
        a device (superseding, ``goalhorn.dispatch.markers``); hash tag ``{collapse_key}``."""
        return f"{self.namespace}:newest:{{{collapse_key}}}:{device_id}"

    def dead_letters(self) -> str:
        """STREAM of batches that exhausted their attempts, with the reason."""
        return f"{self.namespace}:deadletters"

    def breakers(self) -> str:
        """HASH circuit -> JSON of its last transition (state, changed_at, open_until, by), shared by workers."""
        return f"{self.namespace}:{{breakers}}:transitions"

    def breaker_failures(self) -> str:
        """HASH circuit -> consecutive failures the last worker to count them saw."""
        return f"{self.namespace}:{{breakers}}:failures"

    def trace(self, intent_id: str) -> str:
        """HASH of what became of one intent: expansion figures, per-provider outcomes, stage times
        (``goalhorn.counters.IntentTraces``); same hash tag as the intent's delivery markers."""
        return f"{self.namespace}:trace:{{{intent_id}}}"

    def event_intents(self, event_id: str) -> str:
        """SET of the intent ids expanded for one game event."""
        return f"{self.namespace}:trace:event:{{{event_id}}}"

    def paused(self) -> str:
        """HASH platform -> JSON (since, by, reason) of the providers ``goalhorn pause`` paused."""
        return f"{self.namespace}:paused"

    def ops_loaded(self, queue: str) -> str:
        """SET of ``<record id>@<drained at>`` that ``goalhorn queues load`` published to ``queue``."""
        return f"{self.namespace}:ops:loaded:{queue}"

    def stats(self) -> str:
        """HASH of pipeline counters (see goalhorn.dispatch.stats)."""
        return f"{self.namespace}:stats"

    def latencies(self) -> str:
        """LIST of score-change-to-delivery latencies in milliseconds."""
        return f"{self.namespace}:latency_ms"

    def stage_latencies(self, stage: str) -> str:
        """LIST of one stage's latest latencies in milliseconds (``goalhorn.counters.STAGE_LATENCIES``)."""
        return f"{self.namespace}:latency_ms:{stage}"

    def layout(self) -> str:
        """HASH of the parameters the stored data was written with (format version, preference buckets)."""
        return f"{self.namespace}:layout"

    def pattern(self) -> str:
        """SCAN pattern matching every key of the namespace."""
        return f"{self.namespace}:*"

    # --- AMQP ----------------------------------------------------------------------------------
    @property
    def intent_exchange(self) -> str:
        return f"{self.namespace}.intents"

    @property
    def intent_queue(self) -> str:
        return f"{self.namespace}.intents.expand"

    def delivery_queue(self, platform: Platform, lane: Lane = "normal") -> str:
        """dramatiq queue of one provider's delivery batches of one lane: ``<ns>.delivery.<platform>``
        for the normal lane, ``<ns>.delivery.<platform>.critical`` for the critical one."""
        base = f"{self.namespace}.delivery.{platform}"
        return base if lane == "normal" else f"{base}.{lane}"

    def delivery_queues(self, platform: Platform) -> tuple[str, ...]:
        """Every lane's queue of one provider (without dramatiq's ``.DQ`` and ``.XQ``)."""
        return tuple(self.delivery_queue(platform, lane) for lane in LANES)

    def delivery_actor(self, platform: Platform, lane: Lane = "normal") -> str:
        base = f"{self.namespace.replace('-', '_')}_deliver_{platform}"
        return base if lane == "normal" else f"{base}_{lane}"

    # --- Redis: live state (ingest) ----------------------------------------------------------
    def live_games(self) -> str:
        """ZSET game key -> updated_at ms of every game not final."""
        return f"{self.namespace}:{{live}}:games:live"

    def games_by_sport(self, sport: str) -> str:
        """ZSET game key -> updated_at ms of one sport's games."""
        return f"{self.namespace}:{{live}}:games:sport:{sport}"

    def games_by_status(self, status: str) -> str:
        """ZSET game key -> updated_at ms of the games in one status (scheduled, live, final)."""
        return f"{self.namespace}:{{live}}:games:status:{status}"

    # --- Redis: preferences and segments (issue 4) ---------------------------------------------
    def match_watchers(self, game_id: str) -> str:
        """SET of user ids watching a match."""
        return f"{self.namespace}:match:{game_id}:watching"

    def market_watchers(self, token_id: str) -> str:
        """SET of user ids watching a market."""
        return f"{self.namespace}:market:{token_id}:watchers"

    def sport_fans(self, sport: str) -> str:
        """SET of user ids following a whole sport."""
        return f"{self.namespace}:sport:{sport}:all"

    def device_bucket(self, bucket: int) -> str:
        """HASH user id -> the user's devices in compact form; users are spread over a fixed number of
        buckets so a chunk of users costs one HMGET per bucket."""
        return f"{self.namespace}:devices:{{b{bucket}}}"

    def last_seen_bucket(self, bucket: int) -> str:
        """HASH user id -> JSON {device_id: last seen epoch seconds}."""
        return f"{self.namespace}:seen:{{b{bucket}}}"

    def preference_bucket(self, bucket: int) -> str:
        """HASH user id -> non-default preferences (compact JSON); same bucket and slot as the devices."""
        return f"{self.namespace}:prefs:{{b{bucket}}}"

    def bloom_version(self) -> str:
        """STRING: the current version of the "has non-default preferences" Bloom filter."""
        return f"{self.namespace}:bloom:{{prefs}}:version"

    def bloom_blob(self, version: int) -> str:
        """STRING: one version of the Bloom filter, serialized by pybloom-live."""
        return f"{self.namespace}:bloom:{{prefs}}:v{version}"

    def bloom_rebuild_lock(self) -> str:
        """STRING set NX while one process rebuilds the Bloom filter."""
        return f"{self.namespace}:bloom:{{prefs}}:rebuilding"

    def bloom_pending(self) -> str:
        """SET of users whose preferences changed since the current Bloom filter was built."""
        return f"{self.namespace}:bloom:{{prefs}}:pending"

    def caps(self, game_id: str) -> str:
        """HASH user id -> "ms:intent_id,..." of the alerts a capped user got about one match."""
        return f"{self.namespace}:caps:{{{game_id}}}"

    # --- Redis: the sidecar API ---------------------------------------------------------------
    def api_keys(self) -> str:
        """HASH HMAC-SHA-256 hex of an API key -> its record (JSON: id, tenant, tier, scopes, created, revoked)."""
        return f"{self.namespace}:api:{{keys}}:by_digest"

    def api_key_ids(self) -> str:
        """HASH API key id -> the HMAC hex it is stored under (to list and revoke by id)."""
        return f"{self.namespace}:api:{{keys}}:by_id"

    def api_key_last_used(self) -> str:
        """HASH API key id -> epoch ms of its last authenticated request (updated at most once a minute)."""
        return f"{self.namespace}:api:{{keys}}:last_used"

    def score_updates(self) -> str:
        """STREAM of game states whose score, status or period changed (capped; the API's SSE source)."""
        return f"{self.namespace}:api:stream:scores"

    def game_events(self, game_key: str) -> str:
        """LIST of one game's events (GameEvent JSON), oldest first, capped; expires 48 h after its last event."""
        return f"{self.namespace}:api:events:{{{game_key}}}"

    def edge_signals(self) -> str:
        """STREAM of edge signals as fusion emitted them (capped; the API's SSE source)."""
        return f"{self.namespace}:api:stream:signals"

    def rate_limit(self, key_id: str) -> str:
        """STRING: the theoretical arrival time (ms, GCRA) of an API key's next request; expires when idle."""
        return f"{self.namespace}:api:rate:{{{key_id}}}"

    def kill_switches(self) -> str:
        """HASH endpoint group -> why it is switched off (see ``goalhorn.sidecar.switches``)."""
        return f"{self.namespace}:api:switches"

    def tenant_webhooks(self, tenant: str) -> str:
        """HASH endpoint id -> a tenant's webhook endpoint (JSON: user, device, url, rotation)."""
        return f"{self.namespace}:api:tenant:{{{tenant}}}:webhooks"

    def webhook_rotations(self) -> str:
        """ZSET ``<tenant>/<endpoint id>`` -> epoch ms when the secret it replaced stops being signed with."""
        return f"{self.namespace}:api:webhook_rotations"

    def tenant_users(self, tenant: str) -> str:
        """HASH user id (as the tenant names it) -> the user's API record (JSON: locale, created)."""
        return f"{self.namespace}:api:tenant:{{{tenant}}}:users"

    def user_follows(self, user_id: str) -> str:
        """SET of ``<kind>:<target>`` a user followed through the API, so deleting the user can leave
        every follower set it joined."""
        return f"{self.namespace}:api:follows:{{{user_id}}}"

    def ingest_quarantine(self) -> str:
        """LIST of the newest rejected feed payloads (JSON), capped."""
        return f"{self.namespace}:ingest:quarantine"

    # --- Redis: subscriber data safety (issue 14) -------------------------------------------------
    def subscriber_epoch(self) -> str:
        """STRING token stored with the subscriber data: set (NX) by every writer of follower, device
        or preference data, so Redis that restarted empty has none (``goalhorn.preferences.epoch``)."""
        return f"{self.namespace}:subscribers:epoch"

    # --- Redis: FCM topic membership (issue 15) ---------------------------------------------------
    def topics_enabled(self) -> str:
        """STRING present once topic membership is kept (``goalhorn topics sync``): subscriber writes
        then mark their users in :meth:`topics_changed`."""
        return f"{self.namespace}:topics:{{changes}}:enabled"

    def topics_changed(self) -> str:
        """HASH user id -> a token written by every change to the user's follows, devices or
        preferences, removed (if the token is unchanged) once the change is applied to the topics."""
        return f"{self.namespace}:topics:{{changes}}:users"

    def topic_teams(self) -> str:
        """SET of the teams whose FCM topic membership is kept."""
        return f"{self.namespace}:topics:teams"

    def topic_state(self, team_id: str) -> str:
        """HASH of a team's topics: ``generation`` (in every topic name), ``synced`` (the subscriber
        epoch of the last full reconcile, absent while one runs), ``synced_at``, ``n:<topic>`` members."""
        return f"{self.namespace}:topics:{{team:{team_id}}}:state"

    def topic_members(self, team_id: str) -> str:
        """HASH FCM token -> ``<user id>\t<device id>\t<topic>``: what is known to be subscribed."""
        return f"{self.namespace}:topics:{{team:{team_id}}}:members"

    def topic_leases(self, team_id: str) -> str:
        """ZSET intent id -> epoch ms until which a planned topic send may still go out: no token is
        added to the team's topics meanwhile (it would get the push twice)."""
        return f"{self.namespace}:topics:{{team:{team_id}}}:leases"

    def topic_plan(self, intent_id: str) -> str:
        """STRING: the topic plan of an intent (JSON, ``-`` for none), so a redelivered intent is
        expanded the same way; expires with the intent."""
        return f"{self.namespace}:topics:plan:{{{intent_id}}}"

    def topic_user(self, user_id: str) -> str:
        """HASH ``<team id>\t<token>`` -> topic: a user's tokens known to be subscribed."""
        return f"{self.namespace}:topics:user:{{{user_id}}}"

    def topics_lock(self) -> str:
        """STRING held (NX, with a lease) by the one process changing topic membership."""
        return f"{self.namespace}:topics:lock"

    # --- Redis: Live Activities and Android live updates (issue 15) -----------------------------
    def la_start_tokens(self, bucket: int) -> str:
        """HASH user id -> JSON {activity type: push-to-start token (hex)}; bucketed (and hash-tagged)
        as the devices, so the followers of a game's teams cost one HMGET per bucket and chunk."""
        return f"{self.namespace}:la:start:{{b{bucket}}}"

    def la_starts(self, bucket: int) -> str:
        """HASH user id -> ``<game id>=<ms>:<intent id>;...``: the Live Activity starts sent to a user
        (one per game; at most a few an hour, Apple's push-to-start budget), same buckets."""
        return f"{self.namespace}:la:started:{{b{bucket}}}"

    def la_update_tokens(self, game_id: str) -> str:
        """HASH user id -> the update token (hex) of the user's Live Activity of one game."""
        return f"{self.namespace}:la:game:{{la:{game_id}}}:update"

    def la_android(self, game_id: str) -> str:
        """HASH user id -> the FCM token a user registered for one game's Android live updates."""
        return f"{self.namespace}:la:game:{{la:{game_id}}}:android"

    def la_retired(self, game_id: str) -> str:
        """SET of the update tokens of one game that a rotation replaced: never registered again."""
        return f"{self.namespace}:la:game:{{la:{game_id}}}:retired"

    def la_ticker(self, game_key: str) -> str:
        """HASH of one match's Live Activity ticker as ingest last published it: ``observed_ms``,
        ``digest`` and ``last_event`` of that update, ``started``, ``ended``, ``tick_at`` (ms), and
        while a claim's intent is not confirmed ``pending``, ``pending_until`` and the ``p_*`` fields it
        replaced (``goalhorn.intents.live_pacing``); hash tag ``{<game key>}``, with its hourly count."""
        return f"{self.namespace}:liveactivity:{{{game_key}}}:ticker"

    def la_high_count(self, game_key: str, hour: int) -> str:
        """STRING: priority-10 Live Activity updates of one match in one clock hour (hours since the epoch)."""
        return f"{self.namespace}:liveactivity:{{{game_key}}}:high:{hour}"

    def la_channels(self) -> str:
        """HASH game id -> JSON of the game's APNs broadcast channel (id, storage policy, created_at)."""
        return f"{self.namespace}:la:{{channels}}:by_game"

    def la_channels_lease(self) -> str:
        """STRING held (NX, with a lease) by the one process creating and deleting channels."""
        return f"{self.namespace}:la:{{channels}}:lease"

    def intent_counted(self, intent_id: str) -> str:
        """STRING set NX once the fanout counted an intent done, so a redelivery is not counted again;
        same hash tag as the intent's trace."""
        return f"{self.namespace}:fanout:counted:{{{intent_id}}}"
