"""Fixtures for the console: a real database (SQLite file or PostgreSQL) holding real jobs, and the app under AppTest.

Jobs are made the way the product makes them: `Labeler.submit` over a folder of images,
then the labeler's own batch processing on the tiny LLaVA model fills the predictions.
The app reads its settings from LLAVA_LABELER_* variables, as `llava-labeler ui` does.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from entrypoints.settings import Settings, get_settings
from labeler import jobs
from labeler.batches import BatchProcessor
from labeler.db import open_database
from labeler.jobs import JobSpec
from labeler.models import Prediction, Review
from labeler.service import Labeler
from ui import login_throttle

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "entrypoints" / "console.py"
SHAPES_SCHEMA = json.loads((REPO / "tests" / "data" / "schemas" / "shapes.json").read_text())
JSON_SPEC = JobSpec(task="json", instruction="Describe the main shape.", schema=SHAPES_SCHEMA, max_new_tokens=48)
CAPTION_SPEC = JobSpec(task="caption", max_new_tokens=6)
PASSWORD = "correct horse battery staple"
APP_TIMEOUT_S = 60


def shape_png(seed: int) -> bytes:
    """A distinct small picture per seed (so the model's confidence differs between items)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (96, 72), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(10, 50), rng.randrange(10, 30)
    draw.ellipse((x, y, x + 30, y + 30), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Console:
    """A database with jobs, the settings that point at it, and the labeler over them."""

    settings: Settings
    labeler: Labeler
    json_job: int | None
    caption_job: int | None
    images: Path

    def reviews(self) -> dict[int, tuple[str, Any, str]]:
        """Every review row in the database: prediction id -> (decision, output, reviewer)."""
        with self.labeler.db.read() as session:
            rows = session.execute(select(Review.prediction_id, Review.decision, Review.output, Review.reviewer)).all()
        return {pid: (decision, output, reviewer) for pid, decision, output, reviewer in rows}

    def lease_owners(self) -> dict[int, str]:
        """Predictions currently leased for review: prediction id -> reviewer."""
        with self.labeler.db.read() as session:
            leased = select(Prediction.id, Prediction.review_lease_owner).where(Prediction.review_lease_owner.is_not(None))
            return dict(session.execute(leased).all())

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            "LLAVA_LABELER_DATA_DIR": str(s.data_dir),
            "LLAVA_LABELER_DATABASE_URL": s.database_url,
            "LLAVA_LABELER_BROKER_URL": s.broker_url,
            "LLAVA_LABELER_ENGINE__MODEL": s.engine.model,
            "LLAVA_LABELER_LABELER__QUEUE": s.labeler.queue,
            "LLAVA_LABELER_LABELER__REVIEW_LEASE_S": str(s.labeler.review_lease_s),
        }


def make_console(tmp: Path, model: Path, backend, database_url: str, *, captions: bool = True) -> Console:
    folder = tmp / "images"
    folder.mkdir()
    for n in range(6):
        (folder / f"shape-{n}.png").write_bytes(shape_png(n))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    settings = Settings(
        data_dir=tmp / "data",
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp}/data/broker.db",
        engine={"model": str(model)},
        labeler={"queue": f"console-test-{uuid.uuid4().hex[:8]}", "metrics_port": 0},
    )
    labeler = Labeler(settings)
    processor = BatchProcessor(labeler.db, settings, lambda: backend)
    made = []
    for name, spec in (("shapes", JSON_SPEC), ("captions", CAPTION_SPEC))[: 2 if captions else 1]:
        job = labeler.submit(str(folder), spec, name=name, batch_size=4)
        processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id)))
        made.append(job.id)
    return Console(settings, labeler, made[0], made[-1] if captions else None, folder)


@pytest.fixture(scope="session")
def console_template(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_backend) -> Console:
    """The jobs made once per session; tests get copies of its database (see `console`)."""
    folder = tmp_path_factory.mktemp("console")
    return make_console(folder, tiny_model_dir, tiny_backend, f"sqlite:///{folder}/data/labeler.db")


@pytest.fixture
def console(console_template: Console, tmp_path: Path) -> Console:
    """Two finished jobs (JSON shapes and captions, 6 good images and a broken one each) in a SQLite file of this test's own."""
    database = tmp_path / "data" / "labeler.db"
    database.parent.mkdir(parents=True)
    with closing(sqlite3.connect(make_url(console_template.settings.database_url).database)) as source:
        with closing(sqlite3.connect(database)) as copy:
            source.backup(copy)  # consistent even with the template's WAL
    settings = console_template.settings.model_copy(deep=True)
    settings.data_dir, settings.database_url = tmp_path / "data", f"sqlite:///{database}"
    settings.broker_url = f"sqla+sqlite:///{tmp_path}/data/broker.db"
    settings.labeler.queue = f"console-test-{uuid.uuid4().hex[:8]}"
    return replace(console_template, settings=settings, labeler=Labeler(settings))


@pytest.fixture
def empty_console(tmp_path: Path, tiny_model_dir: Path) -> Console:
    """A fresh database without any job."""
    database_url = f"sqlite:///{tmp_path}/data/labeler.db"
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, engine={"model": str(tiny_model_dir)})
    return Console(settings, Labeler(settings), json_job=None, caption_job=None, images=tmp_path)


@pytest.fixture(scope="session")
def console_pg_database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of the console tests' own, dropped at the end of the session."""
    name = f"console_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    open_database(make_url(postgres_url).set(database=name).render_as_string(hide_password=False)).dispose()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_console(tmp_path: Path, tiny_model_dir: Path, tiny_backend, console_pg_database: str) -> Console:
    """The JSON job alone, in a PostgreSQL database."""
    return make_console(tmp_path, tiny_model_dir, tiny_backend, console_pg_database, captions=False)


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def login_clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """A login throttle of this test's own (the real one lives as long as the process), on a clock the test moves."""
    clock = ManualClock()
    monkeypatch.setattr(login_throttle, "THROTTLE", login_throttle.LoginThrottle(clock))
    return clock


@pytest.fixture
def open_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """open_app(console, page=None, sign_in_as=None, **ui) -> the console under AppTest on that database, after a first run.

    `ui` sets LLAVA_LABELER_UI__*; `sign_in_as` turns on password login and signs in under that name;
    `secrets` are what the app finds in st.secrets.
    """

    def open_(
        console: Console, page: str | None = None, *, sign_in_as: str | None = None, secrets: dict[str, Any] | None = None, **ui: str
    ) -> AppTest:
        if sign_in_as is not None:
            ui = {"auth": "password", "password": PASSWORD, **ui}
        for key, value in console.env().items():
            monkeypatch.setenv(key, value)
        for key, value in ui.items():
            monkeypatch.setenv(f"LLAVA_LABELER_UI__{key.upper()}", value)
        get_settings.cache_clear()
        app = AppTest.from_file(str(APP), default_timeout=APP_TIMEOUT_S)
        app.secrets.update(secrets or {})
        app.run()
        if sign_in_as is not None:
            app.text_input[0].input(sign_in_as)
            app.text_input[1].input(PASSWORD)
            app.button[0].click().run()
        if page:
            app.switch_page(f"../ui/views/{page}.py").run()
        return app

    yield open_
    get_settings.cache_clear()
