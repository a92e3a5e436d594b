"""Images for the pages, read the way the workers read them (same URL guard, byte and pixel limits).

Review shows the image large; Browse shows thumbnails. Both are re-encoded PNGs of the
decoded image, so the browser never receives a file the safe loader refused, and both
are cached per server process (a page of thumbnails is read once, not on every rerun).

The pictures travel inside the page, as data: URLs, never through Streamlit's media
endpoint: `st.image` of bytes would publish them at /media/<hash>, a URL the server
answers for anyone, signed in or not. A data: URL reaches only the session whose
script rendered it, which the login (ui/access.py) has already let in.
"""

from __future__ import annotations

import base64
import io

import streamlit as st

from engine.images import ImageError, load_image
from labeler.service import ReadError
from ui.context import labeler, settings

REVIEW_SIZE = 1024
THUMBNAIL_SIZE = 256


class Unviewable(Exception):
    """The image cannot be shown; the message says why."""


def picture(uri: str, size: int = REVIEW_SIZE) -> bytes:
    """PNG bytes of the image at `uri`, at most `size` pixels on its long side."""
    result = _picture(uri, size)
    if isinstance(result, str):
        raise Unviewable(result)
    return result


@st.cache_data(show_spinner=False, max_entries=512, ttl=600)
def _picture(uri: str, size: int) -> bytes | str:
    current = settings()
    try:
        image = load_image(labeler().image_bytes(uri), current.images)
    except (ReadError, ImageError) as exc:
        return str(exc)  # cached too: a broken file is not re-read on every rerun
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def inline(png: bytes) -> str:
    """A data: URL of the PNG, which `st.image` passes to the page as is (no media file is made)."""
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def show(uri: str, *, size: int = REVIEW_SIZE, caption: str | None = None) -> None:
    """The image in the page, or a warning naming why it cannot be shown."""
    try:
        st.image(inline(picture(uri, size)), caption=caption, width="stretch")
    except Unviewable as exc:
        st.warning(f"cannot show {uri}: {exc}")
