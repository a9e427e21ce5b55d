"""README claims that code can check: the settings table and the layout table."""

from __future__ import annotations

from pathlib import Path

from router.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_settings_table_is_the_generated_one() -> None:
    assert settings_table() in README, "README settings table is stale: paste router.settings.settings_table()"


def test_readme_layout_names_every_package_and_no_stale_module() -> None:
    packages = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "router").glob("*/__init__.py"))
    missing = [p for p in packages if f"`{p}/`" not in README]
    assert not missing, f"README layout table misses {missing}"
    root_modules = sorted(
        p.name for p in (ROOT / "router").glob("*.py") if p.name not in {"__init__.py", "__main__.py"}
    )
    assert root_modules == ["cli.py", "errors.py", "settings.py"], (
        f"router/ root holds more than CLI, settings, errors: {root_modules}"
    )
