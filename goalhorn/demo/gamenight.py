"""A recorded game night: ESPN scoreboards of two NHL, two MLS and one NBA game over one evening.

``data/gamenight.jsonl.gz`` (built by ``tools/build_gamenight.py`` from real ESPN payloads) holds
one poll per line, in time order. :func:`load_gamenight` hands each poll back as the bytes a poller
would have received, so the demo, tests and benchmarks drive the real adapter with real bytes.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

DATA = "gamenight.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One poll of one league: ``t`` seconds after the night began, and the scoreboard body."""

    t: float
    sport: str
    league: str
    body: bytes


def load_gamenight(path: Path | None = None) -> list[Snapshot]:
    """Every poll of the night (or of the recording at ``path``), in time order.

    Raises ``ValueError`` naming the line if the recording is malformed or out of order.
    """
    if path is not None:
        with path.open("rb") as raw:
            return _read(raw)
    with resources.files(__package__).joinpath("data", DATA).open("rb") as raw:
        return _read(raw)


def _read(raw: IO[bytes]) -> list[Snapshot]:
    snapshots: list[Snapshot] = []
    with gzip.GzipFile(fileobj=raw, mode="rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                t, sport, league, board = record["t"], record["sport"], record["league"], record["scoreboard"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"game night line {number}: not a snapshot record") from exc
            if not isinstance(t, int | float) or not isinstance(sport, str) or not isinstance(league, str):
                raise ValueError(f"game night line {number}: t, sport or league has the wrong type")
            if not isinstance(board, dict):
                raise ValueError(f"game night line {number}: scoreboard is not an object")
            if snapshots and t < snapshots[-1].t:
                raise ValueError(f"game night line {number}: t={t} goes back in time")
            body = json.dumps(board, ensure_ascii=False, separators=(",", ":")).encode()
            snapshots.append(Snapshot(float(t), sport, league, body))
    return snapshots
