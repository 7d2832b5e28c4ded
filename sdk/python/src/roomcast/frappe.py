"""A drop-in for Frappe-style ``publish_realtime`` calls.

Configure once (at start-up) with a publisher, the site as tenant, and how to run code
after the current transaction commits::

    roomcast.frappe.configure(
        Publisher.from_url(REDIS_URL, origin="erp").in_tenant(frappe.local.site),
        on_commit=frappe.db.after_commit.add,
    )

then keep the calls as they are: ``publish_realtime("list_update", {...}, doctype="Task",
docname="T-1", after_commit=True)``. Routing is Frappe's: ``room``, else
``user:{user}``, else ``doc:{doctype}:{docname}``, else everyone (of the tenant).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import _wire
from .errors import Unsupported
from .publisher import Publisher

_publisher: Optional[Publisher] = None
_on_commit: Optional[Callable[[Callable[[], Any]], Any]] = None


def configure(
    publisher: Publisher, on_commit: Optional[Callable[[Callable[[], Any]], Any]] = None
) -> None:
    """Sets the publisher ``publish_realtime`` uses, and ``on_commit(fn)``, which must run
    ``fn`` after the current transaction commits (and never on rollback)."""
    global _publisher, _on_commit
    _publisher = publisher
    _on_commit = on_commit


def publish_realtime(
    event: str,
    message: Any = None,
    room: Optional[str] = None,
    user: Optional[str] = None,
    doctype: Optional[str] = None,
    docname: Optional[str] = None,
    after_commit: bool = False,
    *,
    tenant: Optional[str] = None,
    publisher: Optional[Publisher] = None,
) -> str:
    """Publishes ``event`` with ``message`` (its one argument) to Frappe's target; with
    ``after_commit``, once the transaction commits. Returns the message id."""
    p = publisher or _publisher
    if p is None:
        raise Unsupported("call roomcast.frappe.configure(publisher) first")
    if tenant is not None:
        p = p.in_tenant(tenant)
    emit = p.broadcast()
    for r in _wire.legacy_to(room, user, doctype, docname):
        emit.to_room(r)
    if not after_commit:
        return emit.emit(event, message)
    if _on_commit is None:
        raise Unsupported(
            "after_commit=True needs configure(..., on_commit=...), e.g. frappe.db.after_commit.add"
        )
    staged = emit.message(event, message)
    sender = p
    _on_commit(lambda: sender.send(staged))
    return staged.id
