"""``python -m chaos [--quick] [SCENARIO ...]``: run the scenarios, print one row each, exit 1 if a
target was missed. ``CHAOS_QUICK=1`` is ``--quick``: smaller audiences and only :data:`QUICK`."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from chaos.report import Row, table
from chaos.rig import Loop
from chaos.scenarios import Context, all_scenarios
from chaos.services import Services

QUICK = ("worker-sigkill", "rabbitmq-sigkill", "hostile-input")
"""The scenarios CI runs (``CHAOS_QUICK=1``): those whose targets main meets; the others are listed
with their figures in docs/reliability.md."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help="run only these (default: all, or the quick set)")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("CHAOS_QUICK") == "1")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    # The suite's own publisher reconnects through the outages it causes: its warnings are expected.
    logging.basicConfig(level=logging.CRITICAL)
    known = dict(all_scenarios())
    if args.list:
        for name in known:
            print(name + ("  (quick)" if name in QUICK else ""))
        return 0
    unknown = [name for name in args.scenarios if name not in known]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}; see --list")
    chosen = args.scenarios or [name for name in known if not args.quick or name in QUICK]
    services = Services()
    loop = Loop()
    rows: list[Row] = []
    work = Path(tempfile.gettempdir())
    started = time.monotonic()
    try:
        services.start()
        work = Path(tempfile.mkdtemp(prefix="goalhorn-chaos-logs-"))
        ctx = Context(services, loop, args.quick, work)
        for name in chosen:
            t0 = time.monotonic()
            print(f"chaos: {name} ...", flush=True)
            try:
                row = known[name](ctx)
            except Exception as exc:  # a scenario that breaks is a failed row, and the suite goes on
                row = Row(name, error=f"{type(exc).__name__}: {exc}")
                traceback.print_exc()
            rows.append(row)
            print(
                f"chaos: {name}: {'ok' if not row.missed else 'MISSED ' + '; '.join(row.missed)} "
                f"({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
            if services.rabbit.proc is None or services.rabbit.proc.poll() is not None:
                try:
                    services.rabbit.start()  # a scenario that failed while the broker was down
                except RuntimeError as exc:
                    rest = chosen[chosen.index(name) + 1 :]
                    rows += [Row(other, error=f"not run: RabbitMQ would not start again ({exc})") for other in rest]
                    break
    finally:
        loop.close()
        services.close()
    print()
    print(table(rows))
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s ({'quick' if args.quick else 'full'})")
    missed = [row.scenario for row in rows if row.missed]
    if missed:
        print(f"targets missed: {', '.join(missed)}; process logs in {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
