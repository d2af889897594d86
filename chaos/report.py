"""One row per scenario: what was published and what the ledger found, and the scenario's own targets."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Check:
    """One target of a scenario: ``measured`` against ``target``, as text, and whether it was met."""

    what: str
    measured: str
    target: str
    ok: bool


@dataclass(slots=True)
class Row:
    scenario: str
    published: int = 0
    """(intent, device) pushes expected."""
    once: int = 0
    lost: int = 0
    """Expected pushes neither delivered nor dead-lettered."""
    duplicated: int = 0
    """Devices that got an intent more than once."""
    dead_lettered: int = 0
    """Devices in dead-letter entries (replayable with ``goalhorn dlq replay``)."""
    recovery_s: float | None = None
    """From the end of the fault to the last expected push; None if some never came."""
    timed: bool = True
    """Whether the scenario has a fault that ends (else recovery is not applicable)."""
    duplicates_allowed: int = 0
    """The stated bound where a duplicate is possible (a push accepted the instant before a kill, or
    Redis data lost); 0 elsewhere."""
    strays: int = 0
    """Pushes nobody should have got."""
    stray_sample: str | None = None
    """One push nobody should have got, as recorded (shown when ``strays``)."""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def check(self, what: str, measured: object, target: str, ok: bool) -> None:
        self.checks.append(Check(what, str(measured), target, ok))

    @property
    def missed(self) -> list[str]:
        """The targets this row misses (empty: it passed)."""
        out = []
        if self.error:
            out.append(f"error: {self.error}")
        if self.timed and self.recovery_s is None and not self.error:
            out.append("never recovered: pushes still missing when the suite stopped waiting")
        if self.lost:
            out.append(f"lost {self.lost} (target 0)")
        if self.duplicated > self.duplicates_allowed:
            out.append(f"duplicated {self.duplicated} (target <= {self.duplicates_allowed})")
        if self.strays:
            out.append(f"{self.strays} pushes to devices that should get nothing")
        out += [f"{c.what}: {c.measured} (target {c.target})" for c in self.checks if not c.ok]
        return out


HEADER = ("scenario", "published", "once", "lost", "dup", "dead-lettered", "recovery", "result")


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, then each row's targets and notes."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        recovery = "n/a" if not row.timed else "never" if row.recovery_s is None else f"{row.recovery_s:.1f} s"
        dup = f"{row.duplicated}" + (f" (≤ {row.duplicates_allowed})" if row.duplicates_allowed else "")
        result = "ok" if not row.missed else "MISSED"
        cells = (row.scenario, row.published, row.once, row.lost, dup, row.dead_lettered, recovery, result)
        lines.append("| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |")
    lines.append("")
    for row in rows:
        lines.append(f"- **{row.scenario}**: " + ("ok" if not row.missed else "missed: " + "; ".join(row.missed)))
        for c in row.checks:
            lines.append(f"  - {c.what}: {c.measured} (target {c.target}) {'ok' if c.ok else 'MISSED'}")
        for note in row.notes:
            lines.append(f"  - {note}")
        if row.strays and row.stray_sample:
            lines.append(f"  - a push nobody should have got: {row.stray_sample}")
    return "\n".join(lines)
