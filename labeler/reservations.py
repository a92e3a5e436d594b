"""Generations in flight: one batch at a time generates a given image, prompt and model version.

The prediction cache (`labeler.batches`) copies answers that are already recorded; two
batches in flight at once would both miss it for an image neither has finished. Before
generating, a batch reserves its keys here: a key another live batch holds is not
generated but deferred (its item goes back to the queue and finds the answer recorded).
A reservation carries its holder's lease token and expiry, is renewed with the lease and
deleted when the holder records its batch; an expired one is taken over, so a worker
that died holding keys delays them by at most one lease.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from labeler.db import dialect_insert
from labeler.models import GenerationReservation

Key = tuple[str, str]  # (content hash, prompt hash)
TABLE = GenerationReservation.__table__


def reserve(session: Session, keys: Iterable[Key], model_version_id: int, owner: str, expires_at: datetime, now: datetime) -> set[Key]:
    """Reserve `keys` for `owner` until `expires_at`; the keys it now holds (free or expired ones).

    One INSERT … ON CONFLICT DO UPDATE … WHERE expired: on PostgreSQL a concurrent holder's
    uncommitted row makes this wait for its commit, then see it, so two batches never both win."""
    rows = [
        {"content_hash": content, "prompt_hash": prompt, "model_version_id": model_version_id, "owner": owner, "expires_at": expires_at}
        for content, prompt in sorted(set(keys))  # one order for every batch: no deadlock between two inserts
    ]
    if not rows:
        return set()
    insert = dialect_insert(session)(TABLE)
    statement = insert.on_conflict_do_update(
        index_elements=["content_hash", "prompt_hash", "model_version_id"],
        set_={"owner": insert.excluded.owner, "expires_at": insert.excluded.expires_at},
        where=TABLE.c.expires_at < now,
    ).returning(TABLE.c.content_hash, TABLE.c.prompt_hash)
    return {(content, prompt) for content, prompt in session.execute(statement.values(rows))}


def renew(session: Session, owner: str, expires_at: datetime) -> None:
    """Push the expiry of everything `owner` holds (the batch's heartbeat)."""
    session.execute(
        update(GenerationReservation)
        .where(GenerationReservation.owner == owner).values(expires_at=expires_at)
        .execution_options(synchronize_session=False)
    )


def release(session: Session, owner: str) -> None:
    """Drop everything `owner` holds: its answers are recorded (or it failed them) in this transaction."""
    session.execute(delete(GenerationReservation).where(GenerationReservation.owner == owner).execution_options(synchronize_session=False))

