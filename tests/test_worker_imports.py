"""What a process loads only for the command it runs: a delivery worker's memory holds no numpy, no
embedded Redis, no HTTP API server and no firebase-admin of the ``topics`` commands (issue 13's
memory target: the worker's peak RSS)."""

from __future__ import annotations

import json
import subprocess
import sys

from goalhorn.app import ingest, process

HEAVY = ("numpy", "fakeredis", "lupa", "fastapi", "uvicorn", "starlette", "firebase_admin")


def loaded_after(module: str) -> list[str]:
    """Which of ``HEAVY`` a fresh interpreter has loaded after importing ``module``."""
    code = f"import json, sys, {module}; print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def test_the_cli_and_a_stage_process_load_none_of_the_heavy_optional_modules() -> None:
    assert loaded_after("goalhorn.ops.cli") == []
    assert loaded_after("goalhorn.app.process") == []


def test_the_stages_modules_still_load_what_they_use() -> None:
    """The check above can fail: the expander's module brings numpy, the api's FastAPI."""
    assert "numpy" in loaded_after("goalhorn.segmenter.expander")
    assert "fastapi" in loaded_after("goalhorn.app.api")


def test_the_ingest_stop_bound_follows_the_ingest_stage() -> None:
    assert process.STOP_TIMEOUT_S[ingest.NAME] == ingest.STOP_TIMEOUT_S + 5
    assert process.STAGES == ("deliver", "fanout", "ingest")
