"""The review console (`llava-labeler ui` runs `streamlit run entrypoints/console.py`, which calls `main`).

The login comes first: no page runs, and nothing is read from the database, until
`ui.access` knows who the reviewer is. A database that cannot be opened is one line, not a traceback.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ui import access, context
from ui.access import REVIEWER_KEY
from ui.settings import ConsoleConfig

VIEWS = Path(__file__).with_name("views")


def main(settings: ConsoleConfig) -> None:
    """One run of the console's script: the login, then the page the reviewer chose."""
    context.use(settings)
    st.set_page_config(page_title="llava-labeler review", page_icon=":label:", layout="wide")
    ui_settings = settings.ui
    st.session_state[REVIEWER_KEY] = access.require_reviewer(ui_settings)
    try:
        context.labeler()
    except SQLAlchemyError as exc:  # a page of tracebacks helps no reviewer
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        st.error(f"cannot open the labeler database at {where}: {getattr(exc, 'orig', None) or exc}")
        st.stop()

    page = st.navigation(
        [
            st.Page(VIEWS / "jobs.py", title="Jobs", icon=":material/work:", default=True),
            st.Page(VIEWS / "review.py", title="Review", icon=":material/rate_review:"),
            st.Page(VIEWS / "browse.py", title="Browse", icon=":material/photo_library:"),
            st.Page(VIEWS / "models.py", title="Models", icon=":material/model_training:"),
            st.Page(VIEWS / "export.py", title="Export", icon=":material/download:"),
        ]
    )
    with st.sidebar:
        st.caption(f"Signed in as **{st.session_state[REVIEWER_KEY]}**")
        if ui_settings.auth != "none":
            st.button("Sign out", on_click=access.sign_out, args=(ui_settings,))
    page.run()
