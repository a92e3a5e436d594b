"""Model versions: which model produced a prediction, and which one is active.

Training registers a finetuned model as a `candidate` and promotes it to `active`
(retiring the previous one). Workers record every prediction under the version they
actually serve: the one registered at their engine's URI, or, when nobody registered
it, a version created on first use whose name is that URI.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labeler.settings import LabelerConfig
from labeler.db import dialect_insert
from labeler.models import ModelState, ModelVersion


class RegistryError(ValueError):
    """A model-version request that cannot be met (unknown name, bad status)."""


def serving_uri(engine_model: str, engine_url: str | None) -> str:
    """What identifies the model a worker serves: the predictor URL, or the checkpoint."""
    return engine_url or engine_model


def version_for_uri(session: Session, uri: str) -> ModelVersion:
    """The version registered at `uri` (newest first), creating one named after the URI if none."""
    found = session.scalars(select(ModelVersion).where(ModelVersion.uri == uri).order_by(ModelVersion.id.desc())).first()
    if found:
        return found
    insert = dialect_insert(session)(ModelVersion).values(name=uri, uri=uri, status=ModelState.CANDIDATE)
    session.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(ModelVersion).where(ModelVersion.name == uri)).one()


def register(
    session: Session,
    name: str,
    uri: str,
    *,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
    status: str = ModelState.CANDIDATE,
) -> ModelVersion:
    if status not in tuple(ModelState):
        raise RegistryError(f"unknown model status {status!r}; expected one of {', '.join(ModelState)}")
    if session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first():
        raise RegistryError(f"a model version named {name!r} already exists")
    parent_id = get(session, parent).id if parent else None
    version = ModelVersion(name=name, uri=uri, parent_id=parent_id, metrics=metrics, status=status)
    session.add(version)
    session.flush()
    if status == ModelState.ACTIVE:
        _retire_others(session, version.id)
    return version


def get(session: Session, name: str) -> ModelVersion:
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is None:
        raise RegistryError(f"no model version named {name!r}")
    return version


def promote(session: Session, name: str) -> ModelVersion:
    """Make `name` the active version; the previously active one is retired."""
    version = get(session, name)
    version.status = ModelState.ACTIVE
    _retire_others(session, version.id)
    return version


def _retire_others(session: Session, keep: int) -> None:
    session.execute(
        update(ModelVersion).where(ModelVersion.status == ModelState.ACTIVE, ModelVersion.id != keep).values(status=ModelState.RETIRED)
    )


def active(session: Session) -> ModelVersion | None:
    """The active version (the newest, should a race ever have left two)."""
    query = select(ModelVersion).where(ModelVersion.status == ModelState.ACTIVE).order_by(ModelVersion.id.desc())
    return session.scalars(query).first()


def conclude(session: Session, name: str, status: str, metrics: dict[str, Any]) -> ModelVersion:
    """Close a candidate: its final status (`rejected`, `failed`, `candidate`) and what it was judged on.

    Promotion goes through `promote`, never through here, so that the previously active
    version is retired in the same transaction.
    """
    if status not in (ModelState.CANDIDATE, ModelState.REJECTED, ModelState.FAILED):
        raise RegistryError(f"a candidate ends as candidate, rejected or failed, not {status!r} (promote makes it active)")
    version = get(session, name)
    version.status = status
    version.metrics = {**(version.metrics or {}), **metrics}
    return version


def model_for_new_jobs(session: Session, engine_model: str, engine_url: str | None) -> str:
    """The checkpoint a new embedded job should run: the active version's, else the configured one.

    A remote predictor (engine_url) serves whatever was rolled out to it, so the URL wins.
    """
    if engine_url:
        return engine_url
    current = active(session)
    return current.uri if current is not None else engine_model


def settings_for_new_jobs(session: Session, settings: LabelerConfig) -> LabelerConfig:
    """`settings` with the engine on `model_for_new_jobs`: what a worker or `run` starts with, so an
    embedded deployment serves (and attributes predictions to) the promoted version."""
    if settings.engine.url:
        return settings
    model = model_for_new_jobs(session, settings.engine.model, None)
    return settings.model_copy(update={"engine": settings.engine.model_copy(update={"model": model})})
