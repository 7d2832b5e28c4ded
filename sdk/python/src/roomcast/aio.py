"""The asyncio flavour: :class:`AsyncPublisher` over ``redis.asyncio`` (and the HTTP API
on a worker thread), with the same targets as :class:`~roomcast.Publisher`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

import redis
import redis.asyncio

from .errors import PublishFailed, Unsupported
from .http import HttpApi
from .publisher import Message, _Base, _EmitBase

if TYPE_CHECKING:
    from .batch import AsyncBatch
    from .consumer import ClientEvent


class AsyncPublisher(_Base):
    """Publishes from asyncio code (FastAPI, aiohttp, async workers).

    >>> import redis.asyncio
    >>> p = AsyncPublisher(redis.asyncio.Redis(), origin="api")
    >>> await p.in_tenant("acme").to_user("ann").emit("hello", 1)  # doctest: +SKIP
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncPublisher:
        """A publisher over the Redis at ``url``."""
        return cls(redis.asyncio.Redis.from_url(url), **options)

    def to_user(self, user: str) -> AsyncEmit:
        """Every socket of ``user``."""
        return AsyncEmit(self).to_user(user)

    def to_tenant(self, tenant: str) -> AsyncEmit:
        """Every socket of ``tenant``."""
        return AsyncEmit(self).to_tenant(tenant)

    def to_doc(self, doctype: str, name: str) -> AsyncEmit:
        """The sockets watching a document."""
        return AsyncEmit(self).to_doc(doctype, name)

    def to_room(self, room: str) -> AsyncEmit:
        """The members of ``room``."""
        return AsyncEmit(self).to_room(room)

    def broadcast(self) -> AsyncEmit:
        """Every socket of the namespace (of the tenant, when one is set)."""
        return AsyncEmit(self)

    def reply_to_user(self, event: ClientEvent) -> AsyncEmit:
        """The user who sent a client event, in its namespace and tenant."""
        return AsyncEmit(self, ns=event.ns, tenant=event.tenant).to_user(event.user)

    def reply_to_socket(self, event: ClientEvent) -> AsyncEmit:
        """The one socket that sent a client event."""
        e = self.reply_to_user(event)
        e._socket = event.sid
        return e

    def batch(self) -> AsyncBatch:
        """Emits staged now and sent on ``await batch.commit()``."""
        from .batch import AsyncBatch

        return AsyncBatch(self)

    async def send(self, m: Message, ack_timeout_ms: Optional[int] = None) -> Any:
        """Publishes one built message; its id (or the gateway's answer with acks)."""
        if ack_timeout_ms is not None or self._redis is None:
            http = self._http
            if http is None:
                raise Unsupported("acknowledgements need the HTTP API (HttpApi)")
            answer = await asyncio.to_thread(http.publish, m.envelope, ack_timeout_ms)
            return answer if ack_timeout_ms is not None else m.id
        try:
            await self._redis.execute_command(*self._redis_command(m))
        except redis.RedisError as e:
            raise PublishFailed(f"Redis: {e}", m.id) from e
        return m.id

    async def history(self, room: str, since: Optional[str] = None, limit: int = 100) -> Any:
        """One page of ``room``'s history (HTTP API)."""
        api = self._api()
        s = self._s
        return await asyncio.to_thread(
            lambda: api.history(room, ns=s.ns, tenant=s.tenant, since=since, limit=limit)
        )

    async def presence(self, room: str) -> Any:
        """Who is in ``room``, cluster-wide (HTTP API)."""
        api = self._api()
        s = self._s
        return await asyncio.to_thread(lambda: api.presence(room, ns=s.ns, tenant=s.tenant))

    def _api(self) -> HttpApi:
        if self._http is None:
            raise Unsupported("history and presence need the HTTP API (HttpApi)")
        return self._http


class AsyncEmit(_EmitBase):
    """A target of an :class:`AsyncPublisher`."""

    _p: AsyncPublisher

    async def emit(self, event: str, *args: Any) -> str:
        """Sends ``event`` with ``args``; the message id."""
        return str(await self._p.send(self.message(event, *args)))

    async def emit_with_ack(self, event: str, *args: Any, timeout_ms: int = 5000) -> list[Any]:
        """Sends and waits for every target socket's answer (HTTP API)."""
        answer = await self._p.send(self.message(event, *args), ack_timeout_ms=timeout_ms)
        return list(answer.get("acks", []))

    def stage(self, batch: AsyncBatch, event: str, *args: Any) -> None:
        """Adds the message to ``batch``."""
        batch.add(self.message(event, *args))
