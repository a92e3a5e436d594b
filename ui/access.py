"""Who may open the console, and under which name their reviews are stored.

The console shows every image a team labels, so outside a laptop it sits behind a login:
- `oidc`: Streamlit's own `st.login` against the provider in secrets.toml `[auth]`; the
  reviewer is the provider's verified e-mail (or name, or subject);
- `password`: one shared password from a secret, compared in constant time; reviewers
  type their name, which is stored on their reviews as given. Wrong passwords slow down and
  then lock sign-in per client and per name (`ui.login_throttle`);
- `none`: only for the local embedded mode, and only bound to a loopback address (the
  operating-system user is the reviewer). `check_exposure` refuses anything else, both in
  `llava-labeler ui` before the server starts and again in the app itself.
"""

from __future__ import annotations

import getpass
import hmac

import streamlit as st

from engine.fetch import is_loopback
from ui import login_throttle
from ui.settings import UISettings

REVIEWER_KEY = "reviewer"
MAX_NAME = 200  # reviews.reviewer is String(200)


class ExposureError(ValueError):
    """The console would be reachable by others without a login; the message says what to set."""


def check_exposure(ui: UISettings) -> None:
    """Refuse a configuration that would serve the console to others without a login."""
    if ui.auth == "none" and not is_loopback(ui.host):
        raise ExposureError(
            f"refusing to serve the console on {ui.host} without a login: set LLAVA_LABELER_UI__AUTH=password "
            "(with LLAVA_LABELER_UI__PASSWORD) or oidc, or bind 127.0.0.1"
        )
    if ui.auth == "password" and not (ui.password and ui.password.get_secret_value()):
        raise ExposureError("LLAVA_LABELER_UI__AUTH=password needs the password in LLAVA_LABELER_UI__PASSWORD")


def require_reviewer(ui: UISettings) -> str:
    """The signed-in reviewer's name; otherwise show the login and stop this run of the script."""
    try:
        check_exposure(ui)
    except ExposureError as exc:
        st.error(str(exc))
        st.stop()
    if ui.auth == "oidc":
        return _oidc_user()
    if ui.auth == "password":
        return _password_user(ui)
    return getpass.getuser()


def _oidc_user() -> str:
    if not _oidc_configured():
        st.error("LLAVA_LABELER_UI__AUTH=oidc needs an [auth] section (the OIDC provider) in .streamlit/secrets.toml")
        st.stop()
    if not st.user.get("is_logged_in"):
        st.title("llava-labeler review console")
        st.write("Sign in to review labels.")
        st.button("Log in", on_click=st.login, type="primary")
        st.stop()
    name = st.user.get("email") or st.user.get("name") or st.user.get("sub")
    return str(name)[:MAX_NAME]


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:  # no secrets.toml at all
        return False


def _password_user(ui: UISettings) -> str:
    if REVIEWER_KEY in st.session_state:
        return st.session_state[REVIEWER_KEY]
    st.title("llava-labeler review console")
    with st.form("login"):
        name = st.text_input("Your name (stored with your reviews)", max_chars=MAX_NAME)
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        _sign_in(ui, name, password)
    st.stop()


def _sign_in(ui: UISettings, name: str, password: str) -> None:
    """Check one try, unless the client or the name must wait: then the password is not even compared."""
    throttle = login_throttle.THROTTLE  # the server process's store, shared by every session
    keys = [login_throttle.client_key(st.context.ip_address), login_throttle.user_key(name)]
    wait_s = throttle.admit(keys, login_throttle.Rules.of(ui))
    if wait_s:
        st.error(login_throttle.refusal(wait_s))
    elif not hmac.compare_digest(password.encode(), ui.password.get_secret_value().encode()):  # type: ignore[union-attr]
        st.error("Wrong password.")
    else:
        throttle.succeeded(keys)
        if not name.strip():
            st.error("Enter your name: it is stored with every review you make.")
        else:
            st.session_state[REVIEWER_KEY] = name.strip()
            st.rerun()


def sign_out(ui: UISettings) -> None:
    """End the session's login (OIDC: Streamlit's logout; password: forget the name)."""
    if ui.auth == "oidc":
        st.logout()
    else:
        st.session_state.pop(REVIEWER_KEY, None)
