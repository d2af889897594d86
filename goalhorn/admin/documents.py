"""The JSON documents of the ops commands: what ``goalhorn <command> --json`` prints and the sidecar's
``/v1/admin/...`` routes answer, built here once so the two cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from goalhorn.admin.breakers import BreakerView
from goalhorn.admin.dlq import Listing, ReplayReport
from goalhorn.admin.queues import QueueStats
from goalhorn.admin.status import Status
from goalhorn.admin.trace import Trace
from goalhorn.models import DeadLetter

Document = dict[str, Any]


def _iso(when: datetime | None) -> str:
    return when.isoformat() if when is not None else ""


def queues_json(rows: list[QueueStats]) -> list[Document]:
    return [row.as_json() for row in rows]


def breakers_json(views: list[BreakerView]) -> list[Document]:
    return [{**asdict(v), "state": v.state.value} for v in views]


def status_json(s: Status) -> Document:
    out = asdict(s)
    out["queues"] = None if s.queues is None else queues_json(s.queues)
    out["breakers"] = breakers_json(s.breakers)
    out["paused"] = {p: {**v, "since": str(v.get("since"))} for p, v in s.paused.items()}
    out["dead_letters_last_hour"] = [
        {**asdict(g), "first": str(g.first), "last": str(g.last)} for g in s.dead_letters_last_hour
    ]
    return out


def listing_json(listing: Listing) -> Document:
    groups = [{**asdict(g), "first": _iso(g.first), "last": _iso(g.last)} for g in listing.groups]
    return {"groups": groups, "unreadable": listing.unreadable}


def entries_json(found: list[DeadLetter]) -> list[Document]:
    return [entry.model_dump(mode="json") for entry in found]


def replay_json(report: ReplayReport) -> Document:
    return asdict(report)


def trace_json(t: Trace) -> Document:
    out = asdict(t)
    out["times"] = {k: v.isoformat() for k, v in t.times.items()}
    out["timings_s"] = t.timings_s()
    for p in out["providers"].values():
        for key in ("first_at", "last_at"):
            p[key] = p[key].isoformat() if p[key] is not None else None
    return out


def pause_json(platform: str, by: str, within_s: float) -> Document:
    return {"provider": platform, "paused": True, "by": by, "within_s": within_s}


def resume_json(platform: str, was_paused: bool, within_s: float) -> Document:
    return {"provider": platform, "paused": False, "was_paused": was_paused, "within_s": within_s}
