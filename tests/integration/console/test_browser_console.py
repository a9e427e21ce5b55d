"""The operations console in a real browser: Debian's chromium driven by Playwright.

chromium comes from the project's own script (``deploy/install-browser.sh``); Playwright only
drives it (``executable_path``), its own browser download is never used. The walk: sign in
with the keyboard, portfolio, look up the demo VIP, set an override and see it in a classify
call, run a what-if that moves the VIP share, see a helpdesk key refused, apply it with the
admin key, refuse a forged POST without the CSRF token, search decisions. Every page is
photographed at 1280 and 390 px wide into ``artifacts/console/`` (kept as test artefacts) and
checked for labelled inputs and for no sideways scrolling on a phone.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.settings import Settings
from tests.integration.console.test_console import DRAFT_VIP_20, default_policy_text
from tests.support.api_support import KEYS, VIP_ID, VIP_PHONE, auth, live_server, module_settings, populate, population

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
INSTALLER = ROOT / "deploy" / "install-browser.sh"
SHOTS = ROOT / "artifacts" / "console"
WIDTHS = (1280, 390)
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(INSTALLER)], check=True, timeout=900)
    assert CHROMIUM.exists(), "deploy/install-browser.sh did not install /usr/bin/chromium"
    return CHROMIUM


@pytest.fixture(scope="module")
def server(broker: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    s = module_settings(broker, redis_server.url, "console", api={"workers": 2}, redis={"timeout_ms": 1000})
    asyncio.run(populate(s, population()))
    with live_server(s, tmp_path_factory.mktemp("browser-console") / "api.log"):
        yield s


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            yield b
        finally:
            b.close()


CONTACTS = [
    (c, p) for c in ("technical", "billing", "general", "account") for p in ("urgent", "high", "normal", "urgent")
]


def _base(s: Settings) -> str:
    return f"http://{s.api.host}:{s.api.port}"


def _check_page(page: Any, name: str) -> None:
    """Screenshots at both widths; every visible form control labelled; no sideways scrolling on a phone."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
              .map(e => e.name || e.id)"""
    )
    assert unlabelled == [], f"{name}: inputs without a label: {unlabelled}"
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        if width < 600:
            overflow = page.evaluate("() => document.documentElement.scrollWidth")
            assert overflow <= width + 1, f"{name}: the page scrolls sideways at {width} px ({overflow} px wide)"
        page.screenshot(path=str(SHOTS / f"console-{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def _sign_in_with_keyboard(page: Any, base: str, key: str) -> None:
    page.goto(f"{base}/console/sign-in")
    assert page.evaluate("() => document.activeElement.id") == "api_key"  # autofocus
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent.trim()") == "Sign in"
    page.keyboard.press("Shift+Tab")
    page.keyboard.type(key)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def _classify(api: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = api.post(
        "/v1/classify", json={"customer": {"customer_id": VIP_ID}}, headers=auth("helpdesk")
    ).json()
    return answer


def test_console_walk_in_a_real_browser(server: Settings, browser: Any) -> None:
    base = _base(server)
    admin = browser.new_context(viewport={"width": 1280, "height": 900})
    page = admin.new_page()
    with httpx.Client(base_url=base, timeout=10) as api:
        # some contacts first, so the portfolio has deadlines falling due
        for i, (category, priority) in enumerate(CONTACTS):
            who = {"customer_id": VIP_ID} if i % 5 == 0 else {"customer_id": f"S{i:03d}"}
            body = {"customer": who, "category": category, "priority": priority, "channel": "email"}
            assert api.post("/v1/classify", json=body, headers=auth("helpdesk")).status_code == 200
        page.wait_for_timeout(300)  # the audit writer lingers a few milliseconds

        # sign in (keyboard only) and the portfolio
        page.goto(f"{base}/console/sign-in")
        _check_page(page, "sign-in")
        _sign_in_with_keyboard(page, base, KEYS["admin"])
        assert page.url.endswith("/console/portfolio"), page.inner_text("main")
        assert page.locator("svg.chart").count() == 4
        due = page.locator("svg[aria-label^='Deadlines falling due']").inner_html()
        assert ">vip<" in due and ">billing<" in due and ">support<" in due  # urgent contacts: 4-8 h
        assert page.get_by_text("Net revenue retention").is_visible()
        _check_page(page, "portfolio")
        cookie = next(c for c in admin.cookies() if c["name"] == "router_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0

        # the demo VIP by phone number (in the form body), then an override that classify honours
        page.get_by_role("link", name="Customer").click()
        page.select_option("#kind", "phone")
        page.fill("#value", VIP_PHONE)
        page.get_by_role("button", name="Look up").click()
        assert page.locator("h2 .tier.VIP").is_visible()
        assert "901820" not in page.url and "901820" not in page.content()
        _check_page(page, "customer")
        page.select_option("#ov-tier", "Premium")
        page.fill("#ov-reason", "key account under review")
        page.fill("#ov-hours", "2")
        page.get_by_role("button", name="Set override").click()
        assert page.get_by_text("Override set: Premium").is_visible()
        decision = _classify(api)
        assert decision["tier"] == "Premium" and decision["overridden"] is True
        page.fill("#clear-reason", "review finished")
        page.get_by_role("button", name="Remove override").click()
        assert page.get_by_text("Override removed.").is_visible()
        assert _classify(api)["tier"] == "VIP"

        # a forged POST without the CSRF token is refused, from the signed-in page itself
        forged = page.evaluate(
            """async (id) => (await fetch('/console/customer/override', {method: 'POST',
                 body: new URLSearchParams({customer_id: id, tier: 'Basic', reason: 'forged', hours: '1'})})).status""",
            VIP_ID,
        )
        assert forged == 403 and _classify(api)["tier"] == "VIP"

        # what-if: VIP from the 80th percentile instead of the 90th
        draft = default_policy_text()
        for old, new in DRAFT_VIP_20:
            draft = draft.replace(old, new)
        page.get_by_role("link", name="Policy what-if").click()
        _check_page(page, "policy")
        page.fill("#draft", draft)
        page.fill("#days", "1")
        page.fill("#capacity", "5")
        page.get_by_role("button", name="Simulate").click()
        page.wait_for_selector("text=Who changes tier", timeout=120_000)  # the script reloads when done
        assert page.locator("tr", has_text="Premium").filter(has_text="VIP").count() >= 1
        simulation_url = page.url
        _check_page(page, "simulation")

        # a helpdesk key can neither see nor apply it
        helpdesk = browser.new_context()
        other = helpdesk.new_page()
        _sign_in_with_keyboard(other, base, KEYS["helpdesk"])
        assert other.url.endswith("/console/decisions")
        assert other.goto(simulation_url).status == 403
        refused = other.evaluate(
            """async (url) => {
                 const page = await (await fetch('/console/decisions')).text();
                 const csrf = page.match(/name="csrf" value="([^"]+)"/)[1];
                 return (await fetch(url + '/apply', {method: 'POST', body: new URLSearchParams({csrf})})).status;
               }""",
            simulation_url,
        )
        assert refused == 403 and _classify(api)["policy_version"] == "2026-11-25.1"
        helpdesk.close()

        # the admin applies it: every worker answers with the new version
        page.get_by_role("button", name="Apply policy 2026-12-01.1 on every worker").click()
        assert page.get_by_text("in force").first.is_visible()
        changed = page.locator("pre.diff span.add").all_inner_texts()
        assert any(line.startswith("+VIP = 80") for line in changed), changed
        assert page.locator("pre.diff").inner_text().count("\n") >= 6  # one line per line, as a diff reads
        _check_page(page, "version")
        page.wait_for_timeout(1500)
        assert _classify(api)["policy_version"] == "2026-12-01.1"

        # decisions of the VIP, found by e-mail through the keyed index
        page.get_by_role("link", name="Decisions").click()
        page.select_option("#d-kind", "email")
        page.fill("#d-value", "boss@example.com")
        page.get_by_role("button", name="Find decisions").click()
        assert page.locator("td code").count() >= 3
        assert page.get_by_text("Tier set by a person: Premium").first.is_visible()
        _check_page(page, "decisions")
    admin.close()
