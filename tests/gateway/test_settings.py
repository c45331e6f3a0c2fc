"""Settings are documented on their fields, and README's settings table is the one generated from them."""

from __future__ import annotations

import pathlib

import pytest

from gateway.settings import Settings, settings_markdown

pytestmark = pytest.mark.unit

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- settings-table:start -->\n"
END = "<!-- settings-table:end -->"


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert missing == [], f"settings without Field(description=...): {missing}"


def test_readme_settings_table_is_the_generated_one() -> None:
    text = README.read_text()
    assert START in text and END in text, "README.md lost its settings-table markers"
    readme_table = text.split(START, 1)[1].split(END, 1)[0]
    assert readme_table == settings_markdown(), (
        "README's settings table is stale: run `.venv/bin/python scripts/settings_table.py --write`"
    )


def test_table_lists_every_setting_once_with_its_env_var() -> None:
    rows = [row for row in settings_markdown().splitlines() if row.startswith("| `GATEWAY_")]
    assert [row.split("`")[1] for row in rows] == [f"GATEWAY_{name.upper()}" for name in Settings.model_fields]


def test_a_field_without_description_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    field = Settings.model_fields["port"]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match=r"Settings\.port"):
        settings_markdown()
