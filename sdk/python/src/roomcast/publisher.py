"""Publishing to Roomcast's clients: :class:`Publisher` (blocking) and its targets.

Over Redis (``redis.Redis``), a message goes straight to the channel its target maps to,
as the gateways and the Rust SDK publish; over HTTP (:class:`~roomcast.http.HttpApi`), it
is ``POST /v1/publish``. With both, Redis publishes and HTTP answers history and
presence. Every failure raises with its reason; nothing is dropped silently.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import redis

from . import _wire
from .errors import PublishFailed, Unsupported
from .http import HttpApi

if TYPE_CHECKING:
    from .batch import Batch
    from .consumer import ClientEvent


P = TypeVar("P", bound="_Base")
E = TypeVar("E", bound="_EmitBase")


class Message:
    """A built envelope and where it goes (what a batch holds until it commits)."""

    def __init__(self, envelope: dict[str, Any], channel: str, recorded: bool) -> None:
        self.envelope = envelope
        self.channel = channel
        self.recorded = recorded

    @property
    def id(self) -> str:
        """The envelope's id."""
        return str(self.envelope["id"])


class _Settings:
    """What a publisher and its derived copies share or override."""

    def __init__(
        self,
        prefix: str,
        origin: str,
        ns: str,
        tenant: Optional[str],
        recorded: Sequence[str],
        history_max_len: int,
        history_ttl_ms: int,
    ) -> None:
        self.prefix = prefix
        self.origin = origin
        self.ns = _wire.check_namespace(ns)
        self.tenant = None if tenant is None else _wire.check_tenant(tenant)
        self.recorded = tuple(recorded)
        self.history_max_len = history_max_len
        self.history_ttl_ms = history_ttl_ms


class _Base:
    """Targets, tenants and namespaces; the transports are the subclasses'."""

    def __init__(
        self,
        redis_client: Any = None,
        http: Optional[HttpApi] = None,
        *,
        prefix: str = "roomcast",
        origin: str = "python",
        ns: str = "/",
        tenant: Optional[str] = None,
    ) -> None:
        if redis_client is None and http is None:
            raise Unsupported("a publisher needs Redis, HTTP, or both")
        self._redis = redis_client
        self._http = http
        self._s = _Settings(prefix, origin, ns, tenant, (), 10_000, 120_000)

    def _with(self: P, **changes: Any) -> P:
        other = copy.copy(self)
        settings = copy.copy(self._s)
        for name, value in changes.items():
            setattr(settings, name, value)
        other._s = settings
        return other

    @property
    def namespace(self) -> str:
        """The namespace messages go to."""
        return self._s.ns

    @property
    def tenant(self) -> Optional[str]:
        """The tenant whose rooms are targeted (``None``: the shared scope)."""
        return self._s.tenant

    def with_origin(self: P, origin: str) -> P:
        """The same publisher, naming ``origin`` as the publishing service."""
        return self._with(origin=origin)

    def in_tenant(self: P, tenant: Optional[str]) -> P:
        """The same publisher, targeting ``tenant``'s rooms."""
        return self._with(tenant=None if tenant is None else _wire.check_tenant(tenant))

    def in_namespace(self: P, ns: str) -> P:
        """The same publisher, in namespace ``ns`` (default ``/``)."""
        return self._with(ns=_wire.check_namespace(ns))

    def with_recovery(
        self: P, namespaces: Sequence[str], window_ms: int = 120_000, max_len: int = 10_000
    ) -> P:
        """The same publisher, recording what it sends into ``namespaces`` as the gateways
        do (give it their ``RECOVERY_NAMESPACES``, ``RECOVERY_WINDOW_MS``,
        ``RECOVERY_MAX_MESSAGES``): clients that recover get these messages too."""
        return self._with(
            recorded=tuple(namespaces), history_ttl_ms=window_ms, history_max_len=max_len
        )

    def _message(
        self,
        event: str,
        args: Sequence[Any],
        to: Sequence[str],
        except_: Sequence[str],
        volatile: bool,
        socket: Optional[str],
        ns: Optional[str] = None,
        tenant: Optional[str] = None,
        tenant_set: bool = False,
    ) -> Message:
        ns = ns or self._s.ns
        tenant = tenant if tenant_set else self._s.tenant
        env = _wire.envelope(
            origin=self._s.origin,
            ns=ns,
            tenant=tenant,
            event=event,
            args=args,
            to=to,
            except_=except_,
            volatile=volatile,
            socket=socket,
        )
        return Message(env, _wire.channel(self._s.prefix, ns, tenant, to), ns in self._s.recorded)

    def _redis_command(self, m: Message) -> tuple[str, ...]:
        payload = _wire.encode(m.envelope).decode()
        if not m.recorded:
            return ("PUBLISH", m.channel, payload)
        return (
            "EVAL",
            _wire.RECORDED_PUBLISH,
            "1",
            _wire.history_stream(self._s.prefix, m.envelope["ns"]),
            str(self._s.history_max_len),
            payload,
            m.channel,
            str(max(1, self._s.history_ttl_ms)),
            "PUBLISH",
        )


class Publisher(_Base):
    """Publishes from blocking code (Flask, Django, Celery, scripts).

    >>> import redis
    >>> p = Publisher(redis.Redis(), origin="billing").in_tenant("acme")
    >>> p.to_user("ann").emit("invoice.paid", {"id": 7})  # doctest: +SKIP
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Publisher:
        """A publisher over the Redis at ``url`` (the gateways' ``REDIS_URL``)."""
        return cls(redis.Redis.from_url(url), **options)

    def to_user(self, user: str) -> Emit:
        """Every socket of ``user`` (room ``user:{user}``)."""
        return Emit(self).to_user(user)

    def to_tenant(self, tenant: str) -> Emit:
        """Every socket of ``tenant`` (room ``tenant:{tenant}``)."""
        return Emit(self).to_tenant(tenant)

    def to_doc(self, doctype: str, name: str) -> Emit:
        """The sockets watching a document (room ``doc:{doctype}:{name}``)."""
        return Emit(self).to_doc(doctype, name)

    def to_room(self, room: str) -> Emit:
        """The members of ``room`` (``kind:id``)."""
        return Emit(self).to_room(room)

    def broadcast(self) -> Emit:
        """Every socket of the namespace (of the tenant, when one is set)."""
        return Emit(self)

    def reply_to_user(self, event: ClientEvent) -> Emit:
        """The user who sent a client event, in its namespace and tenant."""
        return Emit(self, ns=event.ns, tenant=event.tenant).to_user(event.user)

    def reply_to_socket(self, event: ClientEvent) -> Emit:
        """The one socket that sent a client event, wherever it is connected."""
        e = self.reply_to_user(event)
        e._socket = event.sid
        return e

    def batch(self) -> Batch:
        """Emits staged now and sent together on :meth:`Batch.commit` (after a database
        commit); nothing is sent on :meth:`Batch.rollback`."""
        from .batch import Batch

        return Batch(self)

    def send(self, m: Message, ack_timeout_ms: Optional[int] = None) -> Any:
        """Publishes one built message; its id (or the gateway's answer with acks)."""
        if ack_timeout_ms is not None or self._redis is None:
            if self._http is None:
                raise Unsupported("acknowledgements need the HTTP API (HttpApi)")
            answer = self._http.publish(m.envelope, ack_timeout_ms)
            return answer if ack_timeout_ms is not None else m.id
        try:
            self._redis.execute_command(*self._redis_command(m))
        except redis.RedisError as e:
            raise PublishFailed(f"Redis: {e}", m.id) from e
        return m.id

    def history(self, room: str, since: Optional[str] = None, limit: int = 100) -> Any:
        """One page of ``room``'s history (HTTP API): ``{"messages", "next"}``."""
        return self._api().history(
            room, ns=self._s.ns, tenant=self._s.tenant, since=since, limit=limit
        )

    def presence(self, room: str) -> Any:
        """Who is in ``room``, cluster-wide (HTTP API)."""
        return self._api().presence(room, ns=self._s.ns, tenant=self._s.tenant)

    def _api(self) -> HttpApi:
        if self._http is None:
            raise Unsupported("history and presence need the HTTP API (HttpApi)")
        return self._http


class _EmitBase:
    """Who receives a message: rooms added with ``to_*``, removed with ``except_*``."""

    def __init__(self, publisher: _Base, ns: Optional[str] = None, **tenant: Any) -> None:
        self._p = publisher
        self._to: list[str] = []
        self._except: list[str] = []
        self._volatile = False
        self._socket: Optional[str] = None
        self._ns = ns
        self._tenant_set = "tenant" in tenant
        self._tenant: Optional[str] = tenant.get("tenant")

    def to_user(self: E, user: str) -> E:
        """Adds ``user:{user}``."""
        return self.to_room(f"user:{user}")

    def to_tenant(self: E, tenant: str) -> E:
        """Adds ``tenant:{tenant}``."""
        return self.to_room(f"tenant:{tenant}")

    def to_doc(self: E, doctype: str, name: str) -> E:
        """Adds ``doc:{doctype}:{name}``."""
        return self.to_room(f"doc:{doctype}:{name}")

    def to_room(self: E, room: str) -> E:
        """Adds ``room``."""
        self._to.append(_wire.check_room(room))
        return self

    def except_room(self: E, room: str) -> E:
        """Leaves out the members of ``room``."""
        self._except.append(_wire.check_room(room))
        return self

    def except_user(self: E, user: str) -> E:
        """Leaves out ``user``'s sockets."""
        return self.except_room(f"user:{user}")

    def volatile(self: E) -> E:
        """May be dropped for a client whose connection is not ready (Socket.IO's
        ``volatile``)."""
        self._volatile = True
        return self

    def message(self, event: str, *args: Any) -> Message:
        """The message ``event(*args)`` would be, validated, not sent."""
        return self._p._message(
            event,
            args,
            self._to,
            self._except,
            self._volatile,
            self._socket,
            ns=self._ns,
            tenant=self._tenant,
            tenant_set=self._tenant_set,
        )


class Emit(_EmitBase):
    """A target of a blocking :class:`Publisher`."""

    _p: Publisher

    def emit(self, event: str, *args: Any) -> str:
        """Sends ``event`` with ``args`` (one argument arrives as one, like Socket.IO's
        ``emit``); returns the message id."""
        return str(self._p.send(self.message(event, *args)))

    def emit_with_ack(self, event: str, *args: Any, timeout_ms: int = 5000) -> list[Any]:
        """Sends and waits up to ``timeout_ms`` for every target socket's answer (HTTP
        API): ``[{"sid", "data"} | {"sid", "error"}]``."""
        answer = self._p.send(self.message(event, *args), ack_timeout_ms=timeout_ms)
        return list(answer.get("acks", []))

    def stage(self, batch: Batch, event: str, *args: Any) -> None:
        """Adds the message to ``batch`` (validated now, sent on commit)."""
        batch.add(self.message(event, *args))
