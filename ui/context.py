"""What every page needs: the settings, the labeler service for them, and the signed-in reviewer.

The console's script (`entrypoints/console.py`) hands the settings to `ui.app.main`, which
keeps them here for the pages of that run. One `Labeler` per settings per server process
(Streamlit's resource cache), so sessions share the database connection pool instead of
opening one per rerun.
"""

from __future__ import annotations

import streamlit as st

from labeler.service import Labeler
from ui.access import REVIEWER_KEY
from ui.settings import ConsoleConfig

_settings: ConsoleConfig | None = None


def use(settings: ConsoleConfig) -> None:
    """The settings this server process's pages read (set by `ui.app.main` on every run)."""
    global _settings
    _settings = settings


def settings() -> ConsoleConfig:
    if _settings is None:
        raise RuntimeError("the console's settings are not set: start it with `llava-labeler ui`")
    return _settings


def labeler() -> Labeler:
    current = settings()
    return _labeler(current.model_dump_json(), current)


@st.cache_resource(show_spinner=False)
def _labeler(key: str, _settings: ConsoleConfig) -> Labeler:  # `key` identifies the settings; `_settings` is not hashed
    return Labeler(_settings)


def reviewer() -> str:
    """The name the app's login put in the session (see ui/app.py)."""
    return st.session_state[REVIEWER_KEY]
