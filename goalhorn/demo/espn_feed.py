"""The recorded game night served as ESPN's scoreboard API, so a deployment can be tried end to end
without ESPN: ``goalhorn replay`` runs it, ``GOALHORN_ESPN_BASE_URL`` points ``goalhorn run ingest`` at it.

``GET /apis/site/v2/sports/<sport>/<league>/scoreboard`` answers with the league's latest recorded
snapshot at this moment of the replay (the night compressed into ``duration_s``, then held at its
end), with chunked transfer encoding as ESPN's CDN sends it. Before a league's first snapshot it
answers with its first one, so the first poll sees the games as they began.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

from aiohttp import web

from goalhorn.demo.gamenight import Snapshot

CHUNK = 16 * 1024


@dataclass
class NightFeed:
    snapshots: list[Snapshot]
    duration_s: float
    started: float = field(default_factory=time.monotonic)
    requests: int = 0

    def __post_init__(self) -> None:
        self._by_league: dict[tuple[str, str], list[Snapshot]] = {}
        for snap in self.snapshots:
            self._by_league.setdefault((snap.sport, snap.league), []).append(snap)
        first, last = self.snapshots[0].t, self.snapshots[-1].t
        self._first = first
        self._span = max(last - first, 1e-9)

    @property
    def leagues(self) -> list[str]:
        """``<sport>/<league>`` of every league in the night, for ``GOALHORN_ESPN_LEAGUES``."""
        return [f"{sport}/{league}" for sport, league in self._by_league]

    def current(self, sport: str, league: str) -> Snapshot | None:
        """The league's snapshot at this moment of the replay."""
        snaps = self._by_league.get((sport, league))
        if not snaps:
            return None
        progress = min(1.0, (time.monotonic() - self.started) / self.duration_s) if self.duration_s > 0 else 1.0
        night_t = self._first + progress * self._span
        index = bisect.bisect_right([s.t for s in snaps], night_t) - 1
        return snaps[max(index, 0)]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/apis/site/v2/sports/{sport}/{league}/scoreboard", self._scoreboard)
        return app

    async def _scoreboard(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        snap = self.current(request.match_info["sport"], request.match_info["league"])
        if snap is None:
            return web.json_response({"code": 404, "detail": "no such league in the recording"}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(snap.body), CHUNK):
            await response.write(snap.body[start : start + CHUNK])
        await response.write_eof()
        return response
