"""Run every benchmark module (``bench/bench_*.py``), or those named: ``python -m bench [NAME ...]``.

Each module exposes ``main(argv: list[str]) -> int`` and prints its own figures, always as ratios
against a baseline measured in the same run, since the machines are shared and noisy.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")
    )


def main(argv: list[str]) -> int:
    names = argv or available()
    if not names:
        print("no benchmarks yet")
        return 0
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    worst = 0
    for name in names:
        print(f"== bench {name}", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.bench_{name}")
        worst = max(worst, int(module.main([])))
        print(f"== {name} took {time.perf_counter() - started:.1f} s", flush=True)
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
