"""Run every benchmark module (``bench/bench_*.py``), or those named, and write bench/RESULTS.md:
``python -m bench [--quick] [--no-write] [NAME ...]``.

Each module exposes ``main(argv: list[str]) -> int`` and prints its own figures, always as ratios
against a baseline measured in the same run, since the machines are shared and noisy. A module whose
``main`` also takes ``results`` (a :class:`bench.figures.Results`) reports figures over several runs
(median, min, max); the printed output of the others is kept as their section. ``--quick`` passes
each module its small sizes (the whole suite in a few minutes).

Each bench runs in a process of its own (``python -m bench --child NAME RESULTS_JSON ...``), which
hands its :class:`~bench.figures.Results` back as JSON: no bench inherits another's threads,
connections or module state (expand's first publish to RabbitMQ hung after api or e2e in the same
process), and a bench that crashes or outlives its time is a failed section, not a failed suite.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import os
import pkgutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TextIO

from bench.figures import Results, where, write_results

QUICK_ARGS = {
    "api": ["--seconds", "0.5", "--clients", "100", "--connections", "20"],
    "e2e": ["--quick"],
    "expand": ["--users", "50000", "--rounds", "3", "--naive-sample", "500"],
    "ingest": ["--quick"],
    "providers": ["--small"],
}
OVERRUN = 3.0
"""A bench still running after this many times its planned seconds (and 5 minutes more) is stopped."""


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_")
    )


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def child(name: str, out: Path, bench_args: list[str]) -> int:
    """In the bench's own process: run it, write its Results as JSON to ``out``; its exit code."""
    module = importlib.import_module(f"bench.bench_{name}")
    results = Results(name)
    try:
        if "results" in inspect.signature(module.main).parameters:
            code = int(module.main(bench_args, results=results))
        else:
            tee = _Tee(sys.stdout)
            with contextlib.redirect_stdout(tee):
                code = int(module.main(bench_args))
            results.output = tee.kept.getvalue()
    except Exception as exc:  # the figures measured before it still count; the traceback is in the output
        traceback.print_exc()
        results.note(f"stopped by {type(exc).__name__}: {exc} (the figures above were measured before it)")
        code = 1
    sys.stdout.flush()
    out.write_text(results.to_json())
    return code


def run_one(name: str, bench_args: list[str], timeout_s: float | None = None) -> tuple[Results, int]:
    """Run bench ``name`` in a process of its own (output to this terminal); its Results and exit code.
    A bench that writes no results (it crashed, or was stopped after ``timeout_s``) gets a note saying so."""
    with tempfile.TemporaryDirectory(prefix=f"goalhorn-bench-{name}-") as tmp:
        out = Path(tmp) / "results.json"
        command = [sys.executable, "-m", "bench", "--child", name, str(out), "--", *bench_args]
        # its own session: stopped on overrun with everything it started (sandbox, stage processes)
        proc = subprocess.Popen(command, start_new_session=True)
        stopped = False
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            stopped = True
            code = _stop(proc)
        except BaseException:
            _stop(proc)
            raise
        if out.exists():
            results = Results.from_json(out.read_text())
        else:
            results = Results(name)
            results.note(f"no results: the bench's process exited with code {code} before writing them")
        if stopped:
            results.note(f"stopped after {timeout_s:.0f} s (its plan x {OVERRUN:g} + 5 min): hung or far too slow")
            code = code or 1
    return results, code


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT the bench's process group (its cleanup runs), then SIGKILL what is left after 60 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        name, out, rest = argv[1], Path(argv[2]), argv[3:]
        return child(name, out, rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("names", nargs="*", help=f"benches to run (default: all of {', '.join(available())})")
    parser.add_argument("--quick", action="store_true", help="each bench with its small sizes")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args(argv)
    names = sorted(args.names or available(), key=lambda name: name == "e2e")  # the longest last
    if not names:
        print("no benchmarks yet")
        return 0
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    plans: dict[str, list[tuple[str, float]]] = {
        name: getattr(importlib.import_module(f"bench.bench_{name}"), "planned", lambda q: [])(args.quick)
        for name in names
    }
    for name in names:
        for what, seconds in plans[name]:
            print(f"plan: {name}: {what}: ~{seconds:.0f} s")
    total = sum(s for steps in plans.values() for _, s in steps)
    print(
        f"plan: ~{total / 60:.1f} min at rates measured on the shared machine under load (a quiet machine: less)",
        flush=True,
    )
    worst = 0
    sections: dict[str, str] = {}
    suite_started = time.perf_counter()
    for name in names:
        print(f"== bench {name}", flush=True)
        started = time.perf_counter()
        bench_args = QUICK_ARGS.get(name, []) if args.quick else []
        planned_s = sum(s for _, s in plans[name])
        results, code = run_one(name, bench_args, OVERRUN * planned_s + 300 if planned_s else None)
        worst = max(worst, code)
        took = time.perf_counter() - started
        results.note(f"took {took:.0f} s (planned ~{planned_s:.0f} s){'; exit code ' + str(code) if code else ''}")
        command = " ".join(["python -m bench", name, *bench_args])
        sections[name] = results.markdown(command, where())
        print(f"== {name} took {took:.1f} s", flush=True)
    took_all = time.perf_counter() - suite_started
    print(f"== the suite took {took_all / 60:.1f} min (planned ~{total / 60:.1f})", flush=True)
    if not args.no_write:
        command = " ".join(["python -m bench", *(["--quick"] if args.quick else []), *args.names])
        write_results(sections, command=command, took_s=took_all)
        print("bench/RESULTS.md updated")
    return worst


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
