"""Who gets in: a login whenever auth is configured, and no unauthenticated console beyond loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.fetch import is_loopback
from ui.access import ExposureError, check_exposure
from ui.settings import UISettings

CLI = Path(sys.executable).with_name("llava-labeler")


def page_titles(app) -> list[str]:
    return [title.value for title in app.title]


def test_password_login_is_required_and_names_the_reviewer(console, open_app) -> None:
    app = open_app(console, auth="password", password="s3cret-pass")
    assert page_titles(app) == ["llava-labeler review console"] and not app.dataframe and not app.subheader, "nothing before login"
    app.text_input[0].input("alice")
    app.text_input[1].input("wrong").run()
    app.button[0].click().run()
    assert app.error[0].value == "Wrong password." and page_titles(app) == ["llava-labeler review console"]
    app.text_input[0].input("  ")
    app.text_input[1].input("s3cret-pass")
    app.button[0].click().run()
    assert "Enter your name" in app.error[0].value
    app.text_input[0].input("alice")
    app.button[0].click().run()
    assert page_titles(app) == ["Jobs"] and "Signed in as **alice**" in [c.value for c in app.sidebar.caption]

    app.switch_page("../ui/views/review.py").run()
    task = app.session_state["review.task"]
    app.button(key=f"reject-{task.prediction_id}").click().run()
    assert console.reviews() == {task.prediction_id: ("reject", None, "alice")}

    app.sidebar.button[0].click().run()  # sign out
    assert page_titles(app) == ["llava-labeler review console"]


def sign_in(app, name: str, password: str) -> str | None:
    """Submit the login form; the error it shows (None: signed in)."""
    app.text_input[0].input(name)
    app.text_input[1].input(password)
    app.button[0].click().run()
    return app.error[0].value if app.error else None


def test_wrong_passwords_slow_down_then_lock_sign_in_across_sessions(console, open_app, login_clock) -> None:
    app = open_app(console, auth="password", password="s3cret-pass")
    assert [sign_in(app, "mallory", f"guess-{n}") for n in range(3)] == ["Wrong password."] * 3, "three free tries"
    refused = sign_in(app, "mallory", "s3cret-pass")
    assert refused.endswith("Try again in 1 s.") and page_titles(app) == ["llava-labeler review console"], (
        "a delayed try is refused before the password is compared, even the right one"
    )
    for n in range(3, 10):  # each wrong try as soon as it is allowed: 1 s, 2 s, ... 64 s
        login_clock.advance(2 ** (n - 3))
        assert sign_in(app, "mallory", f"guess-{n}") == "Wrong password."
    login_clock.advance(600)
    assert sign_in(app, "mallory", "s3cret-pass").endswith("Try again in 5 min 0 s."), "ten failures lock for 15 min"

    other_session = open_app(console, auth="password", password="s3cret-pass")
    assert "Try again in 5 min 0 s." in sign_in(other_session, "bob", "s3cret-pass"), (
        "a new session of the same client, under another name, is still locked"
    )
    login_clock.advance(300)
    assert sign_in(other_session, "bob", "s3cret-pass") is None and page_titles(other_session) == ["Jobs"]


def test_oidc_shows_only_the_login_button(console, open_app) -> None:
    provider = {"redirect_uri": "http://127.0.0.1:8501/oauth2callback", "cookie_secret": "x" * 32, "client_id": "console",
                "client_secret": "s", "server_metadata_url": "https://login.example.com/.well-known/openid-configuration"}  # fmt: skip
    app = open_app(console, auth="oidc", secrets={"auth": provider})
    assert page_titles(app) == ["llava-labeler review console"]
    assert [button.label for button in app.button] == ["Log in"] and not app.subheader and not app.dataframe


def test_oidc_without_a_provider_says_what_is_missing(console, open_app) -> None:
    app = open_app(console, auth="oidc")
    assert "needs an [auth] section" in app.error[0].value and not app.button and not page_titles(app)


@pytest.mark.parametrize(
    ("ui", "message"),
    [
        ({"host": "0.0.0.0"}, "refusing to serve the console on 0.0.0.0 without a login"),
        ({"auth": "password"}, "needs the password in LLAVA_LABELER_UI__PASSWORD"),
    ],
)
def test_the_app_itself_refuses_an_exposed_console(console, open_app, ui: dict[str, str], message: str) -> None:
    app = open_app(console, **ui)
    assert message in app.error[0].value and not page_titles(app)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLAVA_LABELER_UI__HOST": "0.0.0.0"}, "refusing to serve the console on 0.0.0.0 without a login"),
        ({"LLAVA_LABELER_UI__HOST": "10.1.2.3", "LLAVA_LABELER_UI__AUTH": "password"}, "needs the password"),
    ],
)
def test_the_ui_command_refuses_to_start_an_exposed_console(env: dict[str, str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_LABELER_UI__")}
    done = subprocess.run([str(CLI), "ui"], env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_the_ui_command_host_option_is_checked_too() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAVA_LABELER_UI__")}
    done = subprocess.run([str(CLI), "ui", "--host", "192.168.1.5"], env=clean, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "on 192.168.1.5 without a login" in done.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
     ("10.0.0.1", False), ("console.internal", False)],
)  # fmt: skip
def test_only_loopback_runs_without_a_login(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_exposure(UISettings(host=host))
    else:
        with pytest.raises(ExposureError):
            check_exposure(UISettings(host=host))
    check_exposure(UISettings(host=host, auth="password", password="x"))
    check_exposure(UISettings(host=host, auth="oidc"))


def test_an_unreachable_database_is_one_clear_line(empty_console, open_app) -> None:
    empty_console.settings.database_url = "postgresql+psycopg2://reviewer:hunter2@127.0.0.1:1/labels"
    app = open_app(empty_console)
    message = app.error[0].value
    assert message.startswith("cannot open the labeler database at postgresql+psycopg2://reviewer:***@127.0.0.1:1/labels")
    assert "hunter2" not in message and not page_titles(app) and not app.exception
