"""Build ``goalhorn/demo/data/gamenight.jsonl.gz``: a recorded night of ESPN scoreboards.

Each game is a real event of the ESPN samples (its ids, teams, venue, soccer details), stripped of
heavy fields and replayed over one evening: every poll of a league writes a line
``{"t", "sport", "league", "scoreboard"}`` whose scoreboard has the samples' shape, with status,
clock, scores, linescores and details set for that moment. Goals are scripted, so the night always
has what tests and the demo rely on (two goals between two polls, a halftime, an NHL overtime, a
goal taken back); poll times and the NBA game's baskets come from a seeded generator.

    .venv/bin/python tools/build_gamenight.py [--samples DIR] [--out PATH] [--seed N]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples" / "espn"
OUT = ROOT / "goalhorn" / "sandbox" / "data" / "gamenight.jsonl.gz"
HEAVY = frozenset(
    {"links", "logos", "logo", "leaders", "statistics", "broadcasts", "broadcast", "headlines", "odds"}
    | {"calendar", "geoBroadcasts", "headshot", "probables", "featuredAthletes", "situation", "series"}
    | {"highlights", "records"}
)
NIGHT_START = datetime(2026, 5, 2, 22, 45, tzinfo=UTC)
EDT = timedelta(hours=-4)
Json = dict[str, Any]


def strip(node: Any) -> Any:
    """A copy without the heavy fields (links, logos, statistics...), at any depth."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in HEAVY}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def status(kind: Json, clock: float, display: str, period: int, detail: str | None = None) -> Json:
    kind = dict(kind)
    if detail is not None:
        kind["detail"] = kind["shortDetail"] = detail
    return {"clock": clock, "displayClock": display, "period": period, "type": kind}


def status_type(type_id: str, name: str, state: str, description: str) -> Json:
    """A status type ESPN sends but the samples happen not to show (halftime, end of period)."""
    return {"id": type_id, "name": name, "state": state, "completed": False, "description": description}


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def scheduled(kind: Json, start: datetime, clock: float, display: str) -> Json:
    local = start + EDT
    clock_12 = f"{(local.hour - 1) % 12 + 1}:{local.minute:02d} {'PM' if local.hour >= 12 else 'AM'} EDT"
    body = status(kind, clock, display, 0)
    body["type"]["detail"] = f"{local:%a, %B} {ordinal(local.day)} at {clock_12}"
    body["type"]["shortDetail"] = f"{local.month}/{local.day} - {clock_12}"
    return body


@dataclass
class Goal:
    """A goal (or, in basketball, a point) at ``wall`` seconds into the night; ``taken_back`` is when
    a review disallowed it."""

    home: bool
    wall: float
    period: int
    detail: Json | None = None
    taken_back: float | None = None

    def counts(self, t: float) -> bool:
        return self.wall <= t and (self.taken_back is None or t < self.taken_back)


@dataclass
class Game:
    """One sample event replayed from ``start`` (seconds into the night)."""

    event: Json
    start: float
    sport: str
    status_at: Callable[[float], Json] = field(repr=False)
    goals: list[Goal] = field(default_factory=list)
    end: float = 0.0
    cards: list[tuple[float, Json]] = field(default_factory=list)

    def snapshot(self, t: float) -> Json:
        event = copy.deepcopy(self.event)
        begins = (NIGHT_START + timedelta(seconds=self.start)).strftime("%Y-%m-%dT%H:%MZ")
        event["date"] = begins
        state = self.status_at(t)
        event["status"] = state
        competition = event["competitions"][0]
        competition["date"] = competition["startDate"] = begins
        competition["status"] = copy.deepcopy(state)
        final = state["type"]["state"] == "post"
        home = sum(1 for g in self.goals if g.home and g.counts(t))
        away = sum(1 for g in self.goals if not g.home and g.counts(t))
        for competitor in competition["competitors"]:
            is_home = competitor["homeAway"] == "home"
            competitor["score"] = str(home if is_home else away)
            if "winner" in competitor:
                competitor["winner"] = final and (home > away if is_home else away > home)
            if "linescores" in competitor:
                competitor["linescores"] = self.linescores(t, is_home, state["period"])
        if "details" in competition:
            plays = [(g.wall, g.detail) for g in self.goals if g.detail is not None and g.counts(t)]
            plays += [(wall, card) for wall, card in self.cards if wall <= t]
            competition["details"] = [detail for _, detail in sorted(plays, key=lambda p: p[0])]
        return event

    def linescores(self, t: float, home: bool, periods: int) -> list[Json]:
        per = [0] * periods
        for goal in self.goals:
            if goal.home == home and goal.counts(t) and goal.period <= periods:
                per[goal.period - 1] += 1
        if self.sport == "basketball":
            return [{"value": float(v), "displayValue": str(v), "period": n + 1} for n, v in enumerate(per)]
        return [{"value": v} for v in per]


def hockey(event: Json, start: float, kinds: dict[str, Json], goals: list[tuple[bool, int, float]]) -> Game:
    """Playoff hockey: 20-minute periods over 36 wall minutes, 18-minute intermissions, sudden-death OT."""
    period_wall, pause, ratio = 2160.0, 1080.0, 1.8
    begin = NIGHT_START + timedelta(seconds=start)
    placed = [Goal(home, start + (p - 1) * (period_wall + pause) + s * ratio, p) for home, p, s in goals]
    last = placed[-1]
    end = last.wall + 60 if last.period == 4 else start + 3 * period_wall + 2 * pause + 30

    def at(t: float) -> Json:
        if t < start:
            return scheduled(kinds["STATUS_SCHEDULED"], begin, 0, "0:00")
        if t >= end:
            extra = last.period == 4
            body = status(kinds["STATUS_FINAL"], 0, "0:00", last.period, "Final/OT" if extra else "Final")
            if extra:
                body["type"]["altDetail"] = "OT"
            return body
        period, into = divmod(t - start, period_wall + pause)
        period = int(period) + 1
        if into >= period_wall:
            name = f"End of {ordinal(period)}"
            kind = status_type("22", "STATUS_END_PERIOD", "in", "End of Period")
            return status(kind | {"detail": f"{name} Period", "shortDetail": name}, 0, "0:00", period)
        left = int(1200 - into / ratio)
        shown = f"{left // 60}:{left % 60:02d}"
        where = "OT" if period == 4 else ordinal(period)
        body = status(kinds["STATUS_IN_PROGRESS"], left, shown, period)
        body["type"]["detail"] = f"{shown} - {where}" + ("" if period == 4 else " Period")
        body["type"]["shortDetail"] = f"{shown} - {where}"
        return body

    return Game(event, start, "hockey", at, placed, end)


def soccer(event: Json, start: float, kinds: dict[str, Json], extra: list[tuple[float, Json]]) -> Game:
    """A match of 47 + 49 wall minutes with a 15-minute halftime, replaying the event's own details
    and the ``extra`` ones (by match second) as they happen."""
    first, pause, second = 2820.0, 900.0, 2940.0
    begin = NIGHT_START + timedelta(seconds=start)
    end = start + first + pause + second

    def wall(match_s: float) -> float:
        return start + match_s if match_s <= 2700 else start + first + pause + match_s - 2700

    def minute(elapsed: float, cap: int) -> tuple[int, str]:
        shown = int(elapsed // 60) + 1
        if shown > cap:
            return cap * 60, f"{cap}'+{shown - cap}'"
        return shown * 60, f"{shown}'"

    def at(t: float) -> Json:
        if t < start:
            return scheduled(kinds["STATUS_SCHEDULED"], begin, 0, "0'")
        if t >= end:
            return status(kinds["STATUS_FULL_TIME"], 5400, f"90'+{int((second - 2700) // 60)}'", 2)
        into = t - start
        if into < first:
            clock, shown = minute(into, 45)
            return status(kinds["STATUS_FIRST_HALF"], clock, shown, 1, shown)
        if into < first + pause:
            kind = status_type("23", "STATUS_HALFTIME", "in", "Halftime")
            return status(kind, 2700, "HT", 1, "HT")
        clock, shown = minute(2700 + into - first - pause, 90)
        return status(kinds["STATUS_SECOND_HALF"], clock, shown, 2, shown)

    plays = [(d["clock"]["value"], d) for d in event["competitions"][0]["details"]] + extra
    goals, cards = [], []
    for match_s, detail in plays:
        detail = copy.deepcopy(detail)
        shown = int(match_s // 60) + 1
        detail["clock"] = {"value": match_s, "displayValue": f"{shown}'"}
        if detail["scoringPlay"]:
            home = detail["team"]["id"] == home_team_id(event)
            goals.append(Goal(home, wall(match_s), 1 if match_s <= 2700 else 2, detail))
        else:
            cards.append((wall(match_s), detail))
    return Game(event, start, "soccer", at, goals, end, cards)


def basketball(event: Json, start: float, kinds: dict[str, Json], rng: random.Random) -> Game:
    """12-minute quarters over 30 wall minutes, 3-minute breaks, 15-minute halftime; seeded baskets."""
    quarter, brk, half, ratio = 1800.0, 180.0, 900.0, 2.5
    begin = NIGHT_START + timedelta(seconds=start)
    gaps = [brk, half, brk, 0.0]
    starts = [start + sum(quarter + g for g in gaps[:n]) for n in range(4)]
    end = starts[3] + quarter + 45
    baskets: list[Goal] = []
    game_s = 0.0
    while game_s < 2870:
        game_s += rng.uniform(10, 19)
        if game_s < 2880 and rng.random() < 0.5:
            q = min(int(game_s // 720), 3)
            points = rng.choices((2, 3, 1), weights=(70, 25, 5))[0]
            home = rng.random() < 0.5
            baskets += [Goal(home, starts[q] + (game_s - q * 720) * ratio, q + 1) for _ in range(points)]
    if sum(g.home for g in baskets) * 2 == len(baskets):
        baskets.append(Goal(True, starts[3] + quarter - 5, 4))

    def at(t: float) -> Json:
        if t < start:
            return scheduled(kinds["STATUS_SCHEDULED"], begin, 0.0, "0.0")
        if t >= end:
            return status(kinds["STATUS_FINAL"], 0.0, "0.0", 4, "Final")
        q = max(n for n in range(4) if starts[n] <= t)
        into = t - starts[q]
        if into >= quarter:
            if q == 1:
                kind = status_type("23", "STATUS_HALFTIME", "in", "Halftime")
                return status(kind, 0.0, "0.0", 2, "Halftime")
            name = f"End of {ordinal(q + 1)}"
            kind = status_type("22", "STATUS_END_PERIOD", "in", "End of Period")
            return status(kind | {"detail": f"{name} Quarter", "shortDetail": name}, 0.0, "0.0", q + 1)
        left = round(720 - into / ratio, 1)
        shown = f"{int(left) // 60}:{int(left) % 60:02d}" if left >= 60 else f"{left:.1f}"
        body = status(kinds["STATUS_IN_PROGRESS"], left, shown, q + 1)
        body["type"]["detail"] = f"{shown} - {ordinal(q + 1)} Quarter"
        body["type"]["shortDetail"] = f"{shown} - {ordinal(q + 1)}"
        return body

    return Game(event, start, "basketball", at, baskets, end)


def home_team_id(event: Json) -> str:
    return next(str(c["team"]["id"]) for c in event["competitions"][0]["competitors"] if c["homeAway"] == "home")


def load(samples: Path, name: str) -> Json:
    data: Json = json.loads((samples / name).read_text(encoding="utf-8"))
    return data


def kinds_of(*boards: Json) -> dict[str, Json]:
    """Status types as the samples spell them, by name (the first sample that has one wins)."""
    kinds: dict[str, Json] = {}
    for board in boards:
        for event in board["events"]:
            kind = {k: v for k, v in event["status"]["type"].items() if k != "altDetail"}
            kinds.setdefault(kind["name"], kind)
    return kinds


def events_of(board: Json, *ids: str) -> list[Json]:
    found = {e["id"]: e for e in board["events"]}
    return [strip(found[i]) for i in ids]


def header(board: Json) -> Json:
    top = {k: strip(v) for k, v in board.items() if k not in ("events", "provider")}
    top["day"] = {"date": f"{NIGHT_START + EDT:%Y-%m-%d}"}
    return top


def build(samples: Path, seed: int) -> list[Json]:
    rng = random.Random(seed)
    nhl = load(samples, "nhl_scoreboard_mixed_2022-09-25_teamtracker.json")
    mls = load(samples, "soccer_usa1_scoreboard_mixed_2022-09-17_teamtracker.json")
    nba = load(samples, "nba_scoreboard_in_2026-05-02_sports-mcp.json")
    nba_post = load(samples, "nba_scoreboard_post_2024-12-15_espn-openapi.json")
    nhl_kinds, mls_kinds, nba_kinds = kinds_of(nhl), kinds_of(mls), kinds_of(nba, nba_post, nhl)
    pit_cbj, edm_wpg = events_of(nhl, "401461562", "401461455")
    orl_tor, chi_clt = events_of(mls, "623600", "623602")
    (phi_bos,) = events_of(nba, "401869412")
    details = {
        (d["athletesInvolved"][0]["displayName"], d["type"]["text"]): strip(d)
        for e in mls["events"]
        for d in e["competitions"][0].get("details", [])
    }
    criscito = details["Domenico Criscito", "Yellow Card"] | {"type": {"id": "70", "text": "Goal"}}
    bronico = details["Brandt Bronico", "Yellow Card"] | {"type": {"id": "70", "text": "Goal"}}
    for goal in (criscito, bronico):
        goal.update(scoringPlay=True, scoreValue=1, yellowCard=False)
    red = details["Jhon Durán", "Yellow Card"] | {"type": {"id": "93", "text": "Red Card"}}
    red.update(redCard=True, yellowCard=False)
    overtime: list[tuple[bool, int, float]] = [
        (False, 1, 400),
        (True, 2, 300),
        (False, 2, 1000),
        (True, 3, 900),
        (True, 4, 400),
    ]
    pit = hockey(pit_cbj, 900, nhl_kinds, overtime)
    edm = hockey(edm_wpg, 4500, nhl_kinds, [(True, 1, 200), (True, 1, 225), (False, 2, 500), (False, 3, 700)])
    edm.goals[2].taken_back = edm.goals[2].wall + 400
    orl = soccer(orl_tor, 2700, mls_kinds, [(4243, criscito)])
    chi = soccer(chi_clt, 4500, mls_kinds, [(3831, bronico), (4650, red)])
    leagues = {
        ("hockey", "nhl"): (header(nhl), [pit, edm]),
        ("soccer", "usa.1"): (header(mls), [orl, chi]),
        ("basketball", "nba"): (header(nba), [basketball(phi_bos, 2700, nba_kinds, rng)]),
    }
    lines: list[Json] = []
    for (sport, league), (top, games) in leagues.items():
        end = max(g.end for g in games) + 400
        t = rng.uniform(0, 60)
        while t < end:
            board = copy.deepcopy(top)
            board["events"] = [g.snapshot(t) for g in sorted(games, key=lambda g: g.start)]
            lines.append({"t": round(t, 3), "sport": sport, "league": league, "scoreboard": board})
            t += rng.uniform(0.8, 1.2) * (end / 50)
    lines.sort(key=lambda line: line["t"])
    return lines


def check(lines: list[Json]) -> dict[str, int]:
    """Fail unless the night has what its users rely on; returns a few counts to print."""
    seen: dict[str, list[tuple[str, int, tuple[int, int]]]] = {}
    for line in lines:
        if line["sport"] == "basketball":
            continue
        for event in line["scoreboard"]["events"]:
            sides = {c["homeAway"]: int(c["score"]) for c in event["competitions"][0]["competitors"]}
            row = (event["status"]["type"]["name"], event["status"]["period"], (sides["home"], sides["away"]))
            seen.setdefault(event["id"], []).append(row)
    jumps = corrections = goals = 0
    for rows in seen.values():
        if rows[0][0] != "STATUS_SCHEDULED" or rows[-1][0] not in ("STATUS_FINAL", "STATUS_FULL_TIME"):
            raise SystemExit("every game must be seen before it starts and after it ends")
        for (_, _, before), (_, _, after) in itertools.pairwise(rows):
            for old, new in zip(before, after, strict=True):
                jumps += new - old >= 2
                corrections += new < old
                goals += max(new - old, 0)
    names = {name for rows in seen.values() for name, _, _ in rows}
    overtime = any(period == 4 for rows in seen.values() for name, period, _ in rows if name == "STATUS_FINAL")
    if not (jumps and corrections and overtime and "STATUS_HALFTIME" in names):
        raise SystemExit(f"night lacks a case: jumps={jumps} corrections={corrections} overtime={overtime}")
    return {"jumps": jumps, "corrections": corrections, "goals": goals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    lines = build(args.samples, args.seed)
    counts = check(lines)
    text = "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(text.encode("utf-8"))
    print(f"{args.out}: {len(lines)} snapshots, {args.out.stat().st_size} bytes, {counts}")


if __name__ == "__main__":
    main()
