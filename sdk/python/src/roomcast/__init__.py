"""Publish real-time events to Roomcast's Socket.IO clients from Python services.

- :class:`Publisher` / :class:`~roomcast.aio.AsyncPublisher`: typed targets
  (``to_user``, ``to_tenant``, ``to_doc``, ``to_room``, several at once, ``except_*``),
  tenants, namespaces, ``volatile``, recorded namespaces; over Redis or HTTP
  (:class:`HttpApi`), which also serves ``history`` and ``presence``.
- :meth:`Publisher.batch`: after-commit publishing (:mod:`roomcast.integrations` for
  Django and SQLAlchemy).
- :class:`Consumer`: client events routed to services, with reclaim and ack;
  :func:`verify_signature` for webhook calls.
- :func:`roomcast.frappe.publish_realtime`: a drop-in for Frappe-style code.

Errors are exceptions with the reason (:class:`RoomcastError` and its subclasses).
"""

from .aio import AsyncEmit, AsyncPublisher
from .batch import AsyncBatch, Batch
from .consumer import ClientEvent, Consumer, Delivery
from .errors import (
    ConsumeError,
    InvalidTarget,
    PublishFailed,
    RoomcastError,
    SignatureError,
    Unsupported,
)
from .http import HttpApi
from .publisher import Emit, Message, Publisher
from .webhook import SIGNATURE_HEADER, sign, verify_signature

__all__ = [
    "SIGNATURE_HEADER",
    "AsyncBatch",
    "AsyncEmit",
    "AsyncPublisher",
    "Batch",
    "ClientEvent",
    "ConsumeError",
    "Consumer",
    "Delivery",
    "Emit",
    "HttpApi",
    "InvalidTarget",
    "Message",
    "PublishFailed",
    "Publisher",
    "RoomcastError",
    "SignatureError",
    "Unsupported",
    "sign",
    "verify_signature",
]

__version__ = "0.1.0"
