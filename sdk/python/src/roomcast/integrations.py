"""Tying a batch to a database transaction: sent when it commits, dropped when it rolls
back. Neither Django nor SQLAlchemy is a dependency; each helper imports its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .batch import Batch
    from .publisher import Publisher


def django_batch(publisher: Publisher, using: Optional[str] = None) -> Batch:
    """A batch sent by Django's ``transaction.on_commit`` of the current transaction
    (database alias ``using``); Django forgets it on rollback. Call inside
    ``transaction.atomic()``.

    >>> with transaction.atomic():  # doctest: +SKIP
    ...     order.save()
    ...     batch = django_batch(publisher)
    ...     publisher.to_user("ann").stage(batch, "order.saved", order.id)
    """
    from django.db import transaction

    batch = publisher.batch()
    transaction.on_commit(batch.commit, using=using)
    return batch


_PENDING = "roomcast_batches"


def sqlalchemy_batch(publisher: Publisher, session: Any) -> Batch:
    """A batch sent when ``session`` (a SQLAlchemy ``Session``) next commits, dropped
    when it rolls back.

    >>> batch = sqlalchemy_batch(publisher, session)  # doctest: +SKIP
    >>> publisher.to_doc("Task", "T-1").stage(batch, "doc_update", {"status": "done"})
    >>> session.commit()  # sent here
    """
    from sqlalchemy import event

    batch = publisher.batch()
    pending: list[Batch] | None = session.info.get(_PENDING)
    if pending is None:
        # One pair of listeners per session, for every batch it will carry.
        pending = []
        session.info[_PENDING] = pending

        def committed(_session: Any) -> None:
            batches = list(pending)
            pending.clear()
            for b in batches:
                b.commit()

        def rolled_back(_session: Any) -> None:
            batches = list(pending)
            pending.clear()
            for b in batches:
                b.rollback()

        event.listen(session, "after_commit", committed)
        event.listen(session, "after_rollback", rolled_back)
    pending.append(batch)
    return batch
