"""The real thing: `llava-labeler ui` serving on 127.0.0.1, driven by headless Chromium, a review landing in the database."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CLI = Path(sys.executable).with_name("llava-labeler")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review-page.png"
PASSWORD = "browser-test-password"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(console, tmp_path: Path) -> Iterator[str]:
    """`llava-labeler ui` on a free loopback port with password login; stopped (its whole process group) afterwards."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLAVA_LABELER_")},
        **console.env(),
        "LLAVA_LABELER_UI__PORT": str(port),
        "LLAVA_LABELER_UI__AUTH": "password",
        "LLAVA_LABELER_UI__PASSWORD": PASSWORD,
    }
    log = tmp_path / "streamlit.log"
    with log.open("w") as handle:
        server = subprocess.Popen([str(CLI), "ui"], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            raise AssertionError(f"the console did not come up on {url}:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def test_review_an_item_in_a_real_browser(console, served: str, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1250})
            page.goto(served)
            page.get_by_label("Your name (stored with your reviews)").fill("browser-reviewer")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Jobs")).to_be_visible(timeout=30_000)

            page.get_by_role("link", name="Review").click()
            expect(page.get_by_text("Model output")).to_be_visible(timeout=30_000)
            page.get_by_test_id("stSelectbox").filter(has_text="Job").click()
            page.get_by_role("option", name=f"#{console.json_job} shapes (json)").click()
            expect(page.get_by_text(f"Job #{console.json_job}")).to_be_visible(timeout=30_000)
            expect(page.get_by_test_id("stImage").first).to_be_visible()
            expect(page.get_by_text("shape", exact=True).first).to_be_visible()  # the form from the job's schema
            page.wait_for_timeout(500)  # let the image finish painting
            shot = artifacts_dir / "review-page.png"
            page.screenshot(path=str(shot), full_page=True)
            if not DOCS_SCREENSHOT.exists() or os.environ.get("LLAVA_LABELER_UPDATE_SCREENSHOT") == "1":
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)  # the README's picture; kept unless asked, so a test run leaves git clean
                shutil.copyfile(shot, DOCS_SCREENSHOT)

            assert console.reviews() == {}
            held = console.lease_owners()
            assert list(held.values()) == ["browser-reviewer"], "the page leased one item to the signed-in reviewer"
            page.get_by_role("heading", name="Review").click()  # focus the page, not a field, then the shortcut
            page.keyboard.press("a")
            expect(page.get_by_text("Saved: accept")).to_be_visible(timeout=30_000)
        finally:
            browser.close()
    assert console.reviews() == {next(iter(held)): ("accept", None, "browser-reviewer")}
