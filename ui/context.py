"""What every page needs: the settings, the labeler service for them, and the signed-in reviewer.

One `Labeler` per settings per server process (Streamlit's resource cache), so sessions
share the database connection pool instead of opening one per rerun.
"""

from __future__ import annotations

import streamlit as st

from engine.settings import Settings, get_settings
from labeler.service import Labeler
from ui.access import REVIEWER_KEY


def settings() -> Settings:
    return get_settings()


def labeler() -> Labeler:
    current = settings()
    return _labeler(current.model_dump_json(), current)


@st.cache_resource(show_spinner=False)
def _labeler(key: str, _settings: Settings) -> Labeler:  # `key` identifies the settings; `_settings` is not hashed
    return Labeler(_settings)


def reviewer() -> str:
    """The name the app's login put in the session (see ui/app.py)."""
    return st.session_state[REVIEWER_KEY]
