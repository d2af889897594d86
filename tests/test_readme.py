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
