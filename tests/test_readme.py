"""The README is what users read first: its settings table must list every setting, and only those."""

from __future__ import annotations

import re
from pathlib import Path

from goalhorn.settings import Settings

README = Path(__file__).parent.parent / "README.md"


def test_the_settings_table_lists_every_setting_once() -> None:
    rows = re.findall(r"^\| `(GOALHORN_[A-Z0-9_]+)` \|", README.read_text(), flags=re.M)
    documented = sorted(rows)
    assert len(documented) == len(set(documented)), "a setting is listed twice"
    assert documented == sorted(f"GOALHORN_{name.upper()}" for name in Settings.model_fields)


def test_the_example_subscribers_import_as_the_readme_says(tmp_path) -> None:
    """frank's token is wrong on purpose; everyone else comes in (with the sandbox's allowlist)."""
    from tests.processes import real_env, run_command

    example = README.parent / "docs" / "examples" / "subscribers.jsonl"
    result = run_command(["subscribers", "import", str(example)], real_env(GOALHORN_WEBHOOK_ALLOWLIST="127.0.0.1"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[0].startswith("line 6: devices[0].address: not an APNs token")
    assert "imported 5 lines" in result.stdout


def test_the_readme_sandbox_secret_is_accepted_and_a_bad_one_refused() -> None:
    from tests.processes import clean_env, run_command

    assert "--webhook-secret whsec_Z29hbGhvcm4tcmVhZG1lLXNhbmRib3gtc2VjcmV0ISE=" in README.read_text()
    result = run_command(["sandbox", "--webhook-secret", "whsec_not base64!"], clean_env(), timeout_s=30)
    assert result.returncode == 2
    assert "--webhook-secret" in result.stderr
