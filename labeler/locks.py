"""Named locks in the database, with an expiry, so that two processes on different pods never do the same work.

One row per held lock (`locks` table). Taking it is one INSERT that does nothing on a
conflict, after deleting the row if it has expired: whichever process inserts first
holds it, on SQLite and PostgreSQL alike, with no advisory-lock or file-lock
machinery that would tie us to one database. A holder renews the expiry from a
background thread while it works; one that crashed stops renewing, and its lock is
free again after `ttl_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from labeler.db import Database, dialect_insert
from labeler.models import Lock, utcnow

log = logging.getLogger(__name__)


class LockHeld(RuntimeError):
    """Somebody else holds the lock; the message names the holder and until when."""

    def __init__(self, name: str, owner: str, expires_at: datetime):
        super().__init__(f"{name} is locked by {owner} until {expires_at:%Y-%m-%d %H:%M:%S} UTC")
        self.owner = owner
        self.expires_at = expires_at


@dataclass(frozen=True)
class HeldLock:
    name: str
    owner: str


def new_owner() -> str:
    """Who is asking, readable in the lock row: host, process id, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(db: Database, name: str, ttl_s: float, owner: str | None = None) -> HeldLock:
    """Take lock `name` for `ttl_s` seconds, or raise `LockHeld`."""
    owner = owner or new_owner()

    def take(session) -> Lock:
        now = utcnow()
        session.execute(delete(Lock).where(Lock.name == name, Lock.expires_at < now))
        row = {"name": name, "owner": owner, "acquired_at": now, "expires_at": now + timedelta(seconds=ttl_s)}
        session.execute(dialect_insert(session)(Lock).values(**row).on_conflict_do_nothing(index_elements=["name"]))
        return session.scalars(select(Lock).where(Lock.name == name)).one()

    holder = db.retrying(take)
    if holder.owner != owner:
        raise LockHeld(name, holder.owner, holder.expires_at)
    return HeldLock(name, owner)


def renew(db: Database, lock: HeldLock, ttl_s: float) -> bool:
    """Push the expiry on; False when the lock is no longer ours (it expired and was taken)."""

    def push(session) -> int:
        statement = (
            update(Lock)
            .where(Lock.name == lock.name, Lock.owner == lock.owner)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        )
        return session.execute(statement).rowcount

    return db.retrying(push) == 1


def still_held(db: Database, lock: HeldLock) -> bool:
    with db.read() as session:
        row = session.get(Lock, lock.name)
    return row is not None and row.owner == lock.owner and row.expires_at > utcnow()


def release(db: Database, lock: HeldLock) -> None:
    db.retrying(lambda session: session.execute(delete(Lock).where(Lock.name == lock.name, Lock.owner == lock.owner)))


@contextmanager
def holding(db: Database, name: str, ttl_s: float) -> Iterator[HeldLock]:
    """Hold lock `name` for the block, renewed every third of `ttl_s`; released at the end, whatever happened."""
    lock = acquire(db, name, ttl_s)
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                if not renew(db, lock, ttl_s):
                    log.error("lock %s was lost (expired and taken by another process)", name)
                    return
            except Exception:  # a database hiccup: the next renewal tries again
                log.exception("renewing lock %s failed", name)

    thread = threading.Thread(target=keep, name=f"lock-{name}", daemon=True)
    thread.start()
    try:
        yield lock
    finally:
        stop.set()
        thread.join()
        release(db, lock)
