"""docs/configuration.md is generated from Settings (scripts/config_docs.py): it must not drift."""

from __future__ import annotations

from scripts.config_docs import TARGET, render, sections
from settings import Settings


def test_the_configuration_reference_is_the_one_settings_py_generates():
    assert TARGET.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_documented_once_with_a_meaning_under_a_heading():
    documented = [name for _, fields in sections() for name, _ in fields]
    assert documented == list(Settings.model_fields)
    assert all(field.description for field in Settings.model_fields.values())
    text = render()
    for name in Settings.model_fields:
        assert text.count(f"| `{name.upper()}` |") == 1, name
