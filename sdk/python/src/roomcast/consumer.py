"""Reading client events the gateways append to a namespace's stream
(``UPSTREAM_ROUTES=…=stream``), as one member of a consumer group.

Delivery is at least once: an entry read but never acknowledged (the worker crashed)
stays pending until a member of the group :meth:`Consumer.reclaim` s it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import redis

from . import _wire
from .errors import ConsumeError


@dataclass(frozen=True)
class ClientEvent:
    """One client event forwarded to services, with who sent it."""

    v: int
    id: str
    ts: int
    node: str
    ns: str
    #: The sender's socket id: ``reply_to_socket`` answers it.
    sid: str
    user: str
    event: str
    args: list[Any] = field(default_factory=list)
    tenant: Optional[str] = None
    trace: Optional[str] = None

    @classmethod
    def from_json(cls, raw: bytes) -> ClientEvent:
        """Parses an entry's ``event`` field; ``ValueError`` when it is not one."""
        v = json.loads(raw)
        if not isinstance(v, dict):
            raise ValueError("a client event is a JSON object")
        try:
            return cls(
                v=int(v["v"]),
                id=str(v["id"]),
                ts=int(v["ts"]),
                node=str(v["node"]),
                ns=str(v["ns"]),
                sid=str(v["sid"]),
                user=str(v["user"]),
                event=str(v["event"]),
                args=list(v.get("args") or []),
                tenant=v.get("tenant"),
                trace=v.get("trace"),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a client event: missing or wrong {e}") from e


@dataclass(frozen=True)
class Delivery:
    """A stream entry handed to this consumer; :meth:`Consumer.ack` it once handled (also
    when ``event`` is ``None``: ``error`` says why the entry could not be read)."""

    entry: str
    event: Optional[ClientEvent]
    error: Optional[str] = None


def _delivery(entry_id: Any, fields: Any) -> Delivery:
    entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    raw = (fields or {}).get(b"event", (fields or {}).get("event"))
    if raw is None:
        return Delivery(entry, None, 'the entry has no "event" field')
    try:
        return Delivery(entry, ClientEvent.from_json(raw))
    except ValueError as e:
        return Delivery(entry, None, str(e))


class Consumer:
    """Member ``name`` of group ``group`` on namespace ``ns``'s stream (channel prefix
    ``prefix``, the gateways' ``REDIS_CHANNEL_PREFIX``). Creates the stream and the group
    if needed; a new group starts with the entries still in the stream.

    >>> c = Consumer(redis.Redis(), "notifications", "worker-1")  # doctest: +SKIP
    >>> for d in c.reclaim(30_000) + c.next(5_000):  # doctest: +SKIP
    ...     handle(d.event)
    ...     c.ack(d)
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        group: str,
        name: str,
        *,
        prefix: str = "roomcast",
        ns: str = "/",
    ) -> None:
        self._r = redis_client
        self.stream = _wire.upstream_stream(prefix, _wire.check_namespace(ns))
        self.group = group
        self.name = name
        try:
            self._r.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise ConsumeError(f"Redis stream: {e}") from e
        except redis.RedisError as e:
            raise ConsumeError(f"Redis stream: {e}") from e

    def next(self, block_ms: int = 5000, count: int = 100) -> list[Delivery]:
        """Up to ``count`` entries no member of the group has read, waiting up to
        ``block_ms`` for the first."""
        try:
            reply: Any = self._r.xreadgroup(
                self.group, self.name, {self.stream: ">"}, count=count, block=block_ms
            )
        except redis.RedisError as e:
            raise ConsumeError(f"Redis stream: {e}") from e
        return [_delivery(i, f) for _, entries in (reply or []) for i, f in entries]

    def reclaim(self, min_idle_ms: int = 30_000, count: int = 100) -> list[Delivery]:
        """Takes over up to ``count`` entries other members read but did not acknowledge
        for ``min_idle_ms`` (``XAUTOCLAIM``): the work of a crashed worker."""
        try:
            reply: Any = self._r.xautoclaim(
                self.stream, self.group, self.name, min_idle_time=min_idle_ms, count=count
            )
        except redis.RedisError as e:
            raise ConsumeError(f"Redis stream: {e}") from e
        claimed = reply[1] if len(reply) > 1 else []
        return [_delivery(i, f) for i, f in claimed if f is not None]

    def ack(self, delivery: Delivery) -> None:
        """Marks ``delivery`` handled: it is not delivered again."""
        try:
            self._r.xack(self.stream, self.group, delivery.entry)
        except redis.RedisError as e:
            raise ConsumeError(f"Redis stream: {e}") from e
