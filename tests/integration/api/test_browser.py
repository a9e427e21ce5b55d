"""The screen-pop HTML card in a real headless browser (Debian's chromium), against a live server.

chromium is installed by the project's own script, ``deploy/install-browser.sh``, when missing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.settings import Settings
from tests.conftest import SettingsFactory
from tests.support.api_support import KEYS, VIP_PHONE, api_settings, live_server, populate, population

CHROMIUM = Path("/usr/bin/chromium")
INSTALLER = Path(__file__).resolve().parents[3] / "deploy" / "install-browser.sh"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(INSTALLER)], check=True, timeout=900)
    assert CHROMIUM.exists(), "deploy/install-browser.sh did not install /usr/bin/chromium"
    return CHROMIUM


def _browse(chromium: Path, url: str, out: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--window-size=520,420", "--hide-scrollbars", *mode, url,
        ],
        cwd=out.parent, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip


@pytest.fixture
def server(settings: SettingsFactory, tmp_path: Path) -> Iterator[Settings]:
    s = api_settings(settings)
    asyncio.run(populate(s, population()))
    with live_server(s, tmp_path / "api.log"):
        yield s


def _card_url(s: Settings, phone: str) -> str:
    query = urllib.parse.urlencode({"phone": phone, "key": KEYS["telephony"]})
    return f"http://{s.api.host}:{s.api.port}/v1/screenpop/card?{query}"


def test_card_renders_for_known_and_unknown_callers(chromium: Path, server: Settings, tmp_path: Path) -> None:
    for name, phone in (("known", VIP_PHONE), ("unknown", "+44 20 7946 0000")):
        profile = tmp_path / f"profile-{name}"
        dom = _browse(chromium, _card_url(server, phone), tmp_path / "x", profile, "--dump-dom").stdout
        shot = tmp_path / f"screenpop-{name}.png"
        _browse(chromium, _card_url(server, phone), shot, profile, f"--screenshot={shot}")
        assert shot.exists() and shot.stat().st_size > 2_000, f"no screenshot for {name}"
        if os.environ.get("ROUTER_KEEP_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["ROUTER_KEEP_SCREENSHOTS"]) / shot.name)
        if name == "known":
            assert 'data-caller="known"' in dom and 'data-tier="VIP"' in dom
            assert ">VIP</span> Known customer" in dom
            for label in ("CLV score", "Churn risk", "Sentiment", "Last interaction", "Recommendation"):
                assert label in dom, label
            assert "/100 (top" in dom and "positive" in dom
        else:
            assert 'data-caller="unknown"' in dom and "Unknown caller" in dom
            assert "no customer record for this number" in dom and "CLV score" not in dom
        assert "7946" not in dom and "901820" not in dom  # the number is never shown
