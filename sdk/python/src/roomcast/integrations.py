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


def sqlalchemy_batch(publisher: Publisher, session: Any) -> Batch:
    """A batch sent when ``session`` (a SQLAlchemy ``Session``) next commits, dropped
    when it rolls back.

    >>> batch = sqlalchemy_batch(publisher, session)  # doctest: +SKIP
    >>> publisher.to_doc("Task", "T-1").stage(batch, "doc_update", {"status": "done"})
    >>> session.commit()  # sent here
    """
    from sqlalchemy import event

    batch = publisher.batch()

    def committed(_session: Any) -> None:
        forget()
        batch.commit()

    def rolled_back(_session: Any) -> None:
        forget()
        batch.rollback()

    def forget() -> None:
        for name, fn in (("after_commit", committed), ("after_rollback", rolled_back)):
            if event.contains(session, name, fn):
                event.remove(session, name, fn)

    event.listen(session, "after_commit", committed)
    event.listen(session, "after_rollback", rolled_back)
    return batch
