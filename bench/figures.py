"""Figures over repeated runs, and ``bench/RESULTS.md`` written from them.

A :class:`Figure` holds one measurement's values over the runs (median, min, max), optionally the
baseline measured in the same run (its ratio is printed) and a target (``">= 0.7x"`` of the baseline,
``"< 250"`` in the figure's unit, ``"0"``), judged ok or MISSED. A bench fills a :class:`Results`
with figures and notes; :func:`write_results` puts each bench's section into RESULTS.md under a
header naming the machine and the date, keeping the sections of benches not run this time.
A bench that reports no figures has its printed output kept as its section.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
import platform
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
_TARGET = re.compile(r"^\s*(<=|>=|<|>|=)?\s*([0-9.]+)\s*(x)?")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "=": operator.eq,
}


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    values: list[float]
    unit: str
    baseline: tuple[str, float] | None = None
    """(what, its median in the same unit), measured in the same run."""
    target: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline[1]:
            return None
        return self.median / self.baseline[1]

    def verdict(self) -> str:
        if self.target is None:
            return ""
        found = _TARGET.match(self.target)
        if found is None:
            return ""
        op = _OPS[found.group(1) or "="]
        bound = float(found.group(2))
        value = self.ratio() if found.group(3) else self.median
        if value is None:
            return ""
        return "ok" if op(value, bound) else "MISSED"

    def spread(self) -> str:
        med, low, high = self.median, min(self.values), max(self.values)
        if len(self.values) == 1:
            return f"{_num(med)} {self.unit} (1 run)"
        return f"{_num(med)} {self.unit} ({_num(low)}-{_num(high)}, {len(self.values)} runs)"

    def line(self) -> str:
        text = f"{self.name}: {self.spread()}"
        ratio = self.ratio()
        if self.baseline is not None and ratio is not None:
            text += f"; {self.baseline[0]} {_num(self.baseline[1])} {self.unit} -> {ratio:.2f}x"
        if self.target:
            text += f" (target {self.target}: {self.verdict()})"
        return text


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(slots=True)
class Results:
    bench: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output: str = ""
    """What the bench printed, for a bench that adds no figures."""

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(f"  {figure.line()}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  {text}", flush=True)

    def print(self) -> None:
        for figure in self.figures:
            print(figure.line())
        for text in self.notes:
            print(text)

    def to_json(self) -> str:
        """Everything the bench reported, for the parent of a bench run in its own process."""
        figures = [
            {"name": f.name, "values": f.values, "unit": f.unit, "baseline": f.baseline, "target": f.target}
            for f in self.figures
        ]
        return json.dumps({"bench": self.bench, "figures": figures, "notes": self.notes, "output": self.output})

    @classmethod
    def from_json(cls, text: str) -> Results:
        data: dict[str, Any] = json.loads(text)
        figures = [
            Figure(
                f["name"],
                [float(v) for v in f["values"]],
                f["unit"],
                baseline=(f["baseline"][0], float(f["baseline"][1])) if f["baseline"] else None,
                target=f["target"],
            )
            for f in data["figures"]
        ]
        return cls(data["bench"], figures, list(data["notes"]), data["output"])

    def markdown(self, command: str, where: str) -> str:
        """The bench's section of RESULTS.md; ``where`` names the machine and the date."""
        lines = [f"## {self.bench} (`{command}`)", "", where, ""]
        if self.figures:
            lines += [
                "| what | median (min-max, runs) | baseline in the same run | ratio | target |",
                "|---|---|---|---|---|",
            ]
            for f in self.figures:
                ratio = f.ratio()
                base = f"{f.baseline[0]}: {_num(f.baseline[1])} {f.unit}" if f.baseline else ""
                ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
                target = f"{f.target} {f.verdict()}".strip() if f.target else ""
                lines.append(f"| {f.name} | {f.spread()} | {base} | {ratio_text} | {target} |")
            lines.append("")
        lines += [f"- {text}" for text in self.notes]
        if self.output.strip():
            lines += ["", "```", self.output.strip(), "```"]
        return "\n".join(lines).rstrip() + "\n"


async def _service_versions() -> tuple[str, str]:
    import aio_pika

    from goalhorn.redis_client import make_redis
    from goalhorn.settings import LOCAL_AMQP_URL, LOCAL_REDIS_URL, Settings

    rabbit = redis_version = "unknown"
    try:
        connection = await aio_pika.connect(LOCAL_AMQP_URL, timeout=5)
        rabbit = str(connection.transport.connection.server_properties.get("version", "unknown"))  # type: ignore[union-attr]
        await connection.close()
    except Exception as exc:  # a header line, not a failure of the bench
        rabbit = f"unreachable ({type(exc).__name__})"
    redis = make_redis(Settings(redis_url=LOCAL_REDIS_URL))
    try:
        redis_version = str((await redis.info("server"))["redis_version"])
    except Exception as exc:
        redis_version = f"unreachable ({type(exc).__name__})"
    finally:
        await redis.aclose()
    return rabbit, redis_version


def machine() -> str:
    """Cores, CPU model, Python, RabbitMQ and Redis versions of this machine."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    rabbit, redis = asyncio.run(_service_versions())
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, RabbitMQ {rabbit}, Redis {redis}"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def where() -> str:
    """The date and the machine (and its load), for a section of RESULTS.md."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"Run {now()} on {machine()}; load average at the end {load}."


def write_results(
    sections: dict[str, str],
    path: Path = RESULTS_PATH,
    *,
    command: str = "python -m bench",
    took_s: float | None = None,
) -> None:
    """Replace the sections of the benches run (``{bench: markdown}``) in RESULTS.md; keep the others.
    The header names the machine and the date of this writing (and ``command``, ``took_s``); each
    section keeps the machine and date of its own run."""
    kept: dict[str, str] = {}
    if path.exists():
        current = None
        for line in path.read_text().splitlines(keepends=True):
            found = re.match(r"^## (\S+)", line)
            if found:
                current = found.group(1)
                kept[current] = ""
            if current is not None:
                kept[current] += line
    for name, text in kept.items():
        if name not in sections and not re.search(r"^Run .* on \d+ cores", text, re.M):
            first, _, rest = text.partition("\n")
            unknown = "Run at a date and on a machine not recorded (written before RESULTS.md named them)."
            kept[name] = f"{first}\n\n{unknown}\n{rest}"
    kept.update(sections)
    head = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`; `python -m bench NAME` rewrites one section). Each",
        "figure is the median of its runs with the min and max; each ratio is against a baseline measured",
        "in the same run on the same machine. The machines are shared and noisy (2 cores, other jobs",
        "running): compare ratios, not absolute figures, across machines and runs.",
        "",
        f"Last written {now()} by `{command}`"
        + (f" ({took_s / 60:.1f} min)" if took_s is not None else "")
        + f" on {machine()}. Sections of benches not run then keep the date and machine of their own run.",
    ]
    body = "\n".join(kept[name].rstrip() + "\n" for name in sorted(kept))
    path.write_text("\n".join(head) + "\n\n" + body)
