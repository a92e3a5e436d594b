"""A real predictor process on 127.0.0.1 with the tiny model, shared by the serving tests."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from engine.predictor_process import PredictorProcess

DATA = Path(__file__).resolve().parents[1] / "data"
# Small limits so the limit checks need small bodies; a short max wait keeps the tests quick.
SERVER_ENV = {
    "LLAVA_LABELER_SERVING__MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
    "LLAVA_LABELER_SERVING__MAX_ITEMS_PER_REQUEST": "32",
    "LLAVA_LABELER_SERVING__MAX_WAIT_MS": "20",
    "LLAVA_LABELER_SERVING__MAX_BATCH_SIZE": "8",
    "LLAVA_LABELER_IMAGES__MAX_PIXELS": str(1_000_000),
    "LLAVA_LABELER_FETCH__ALLOW_PRIVATE": "false",
}


@pytest.fixture(scope="session")
def predictor(tiny_model_dir, tmp_path_factory):
    """The URL of `llava-labeler serve` on the tiny model; the process is stopped after the session."""
    log = tmp_path_factory.mktemp("predictor") / "server.log"
    with PredictorProcess(tiny_model_dir, env=SERVER_ENV, log_path=log) as server:
        yield server


def _png(color: str = "red", size: tuple[int, int] = (72, 56)) -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((8, 8, min(size) - 8, min(size) - 8), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png():
    """png(color, size) -> the bytes of a small PNG with a coloured disc."""
    return _png


@pytest.fixture(scope="session")
def b64():
    return lambda data: base64.b64encode(data).decode()


@pytest.fixture(scope="session")
def shapes_schema() -> dict:
    import json

    return json.loads((DATA / "schemas" / "shapes.json").read_text())
