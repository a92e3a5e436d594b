"""The real thing: `llava-labeler ui` on 127.0.0.1 under headless Chromium: a review saved, images kept in the page, logins locked."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CLI = Path(sys.executable).with_name("llava-labeler")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "review-page.png"
PASSWORD = "browser-test-password"
START_TIMEOUT_S = 60
SIGNED_IN = "signed in"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_console(console, log: Path, **ui: str) -> Iterator[str]:
    """`llava-labeler ui` on a free loopback port with password login and `ui` as LLAVA_LABELER_UI__*.

    Stopped (its whole process group) afterwards.
    """
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LLAVA_LABELER_")},
        **console.env(),
        "LLAVA_LABELER_UI__PORT": str(port),
        "LLAVA_LABELER_UI__AUTH": "password",
        "LLAVA_LABELER_UI__PASSWORD": PASSWORD,
        **{f"LLAVA_LABELER_UI__{key.upper()}": value for key, value in ui.items()},
    }
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


@pytest.fixture
def served(console, tmp_path: Path) -> Iterator[str]:
    """The console with its default settings."""
    with serve_console(console, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium under playwright."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Page, name: str, password: str) -> None:
    """Fill in and submit the login form."""
    page.get_by_label("Your name (stored with your reviews)").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_review_an_item_in_a_real_browser(console, served: str, browser: Browser, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1440, "height": 1250})
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(served)
    sign_in(page, "browser-reviewer", PASSWORD)
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible(timeout=30_000)

    page.get_by_role("link", name="Review").click()
    expect(page.get_by_text("Model output")).to_be_visible(timeout=30_000)
    page.get_by_test_id("stSelectbox").filter(has_text="Job").click()
    page.get_by_role("option", name=f"#{console.json_job} shapes (json)").click()
    expect(page.get_by_text(f"Job #{console.json_job}")).to_be_visible(timeout=30_000)
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    expect(page.get_by_text("shape", exact=True).first).to_be_visible()  # the form from the job's schema
    page.wait_for_timeout(500)  # let the image finish painting
    assert_images_inline(page, requested, count=1)
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
    assert console.reviews() == {next(iter(held)): ("accept", None, "browser-reviewer")}

    page.get_by_role("link", name="Browse").click()
    expect(page.get_by_text("14 matching items")).to_be_visible(timeout=30_000)
    page.wait_for_timeout(500)
    done = sum(console.labeler.status(job).done for job in (console.json_job, console.caption_job))
    assert_images_inline(page, requested, count=done)


def assert_images_inline(page: Page, requested: list[str], count: int) -> None:
    """The page shows `count` decoded images, all inside the page: it asked the server for no /media/ URL.

    Streamlit's media endpoint answers anyone who has the URL, signed in or not; a data: URL
    exists only in the signed-in session's own page.
    """
    from playwright.sync_api import expect

    images = page.get_by_test_id("stImage").locator("img")
    expect(images).to_have_count(count)
    sources = images.evaluate_all("imgs => imgs.map(img => [img.currentSrc, img.complete && img.naturalWidth > 0])")
    assert all(src.startswith("data:image/png;base64,") and shown for src, shown in sources), sources
    assert any("/static/" in url for url in requested), "the page's own requests are recorded"
    media = [url for url in requested if urlsplit(url).path.startswith("/media/")]
    assert not media, f"images were served through Streamlit's media endpoint: {media}"


def attempt(context: BrowserContext, url: str, name: str, password: str) -> str:
    """One sign-in on a fresh page (a new session, as a guesser would open): the error shown, or SIGNED_IN."""
    from playwright.sync_api import expect

    page = context.new_page()
    try:
        page.goto(url)
        sign_in(page, name, password)
        outcome = page.get_by_test_id("stAlert").or_(page.get_by_role("heading", name="Jobs"))
        expect(outcome).to_be_visible(timeout=30_000)
        return page.get_by_test_id("stAlert").inner_text() if page.get_by_test_id("stAlert").count() else SIGNED_IN
    finally:
        page.close()


def test_wrong_passwords_lock_the_client_and_the_name_in_every_session(console, tmp_path: Path, browser: Browser) -> None:
    """Two clients behind a proxy on loopback (whose X-Forwarded-For Streamlit's server believes by default)."""
    with serve_console(console, tmp_path / "streamlit.log", login_free_failures="3", login_max_failures="3") as url:
        guesser = browser.new_context(extra_http_headers={"X-Forwarded-For": "203.0.113.7"})
        reviewer = browser.new_context(extra_http_headers={"X-Forwarded-For": "198.51.100.2"})
        assert [attempt(guesser, url, "mallory", f"guess-{n}") for n in range(3)] == ["Wrong password."] * 3
        # The locked client under another name, and the locked name from another client.
        for who, name in ((guesser, "bob"), (reviewer, "Mallory")):
            refused = attempt(who, url, name, PASSWORD)
            assert refused.startswith("Too many wrong passwords") and re.search(r"Try again in 1[45] min", refused), refused
        assert attempt(reviewer, url, "carol", PASSWORD) == SIGNED_IN, "another client under another name gets in"
