"""Roomcast's wire format: room names, tenants, channel names and envelopes.

The same rules as the gateways' (``sdk/fixtures/wire.json`` is checked by both sides):
a room is ``kind:id`` (kind 1-32 of ``a-z0-9_-``, id non-empty, no control characters,
at most 200 bytes); a tenant scopes rooms as ``@{tenant}/{room}`` with ``%``, ``/`` and
``@`` percent-encoded; one room travels on ``{prefix}:room:{ns}#{scoped}``, several rooms
or the whole namespace on ``{prefix}:ns:{ns}``.
"""

from __future__ import annotations

import json
import time
import unicodedata
import uuid
from collections.abc import Sequence
from typing import Any, Optional

from .errors import InvalidTarget

MAX_ROOM_LEN = 200
MAX_KIND_LEN = 32
MAX_TENANT_LEN = 100
BROADCAST = "*"
VERSION = 1

_KIND_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")

#: XADD + PEXPIRE + PUBLISH of the framed entry in one script (the gateways' own):
#: the history's order is the order every node delivers in.
RECORDED_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = redis.call(ARGV[5], ARGV[3], 'o' .. id .. ' ' .. ARGV[2])
return {id, n}
"""


def _has_control(s: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in s)


def check_room(name: str) -> str:
    """Returns ``name`` if it is a valid room name, else raises :class:`InvalidTarget`."""
    if not name:
        raise InvalidTarget(f"invalid room {name!r}: empty")
    if len(name.encode()) > MAX_ROOM_LEN:
        raise InvalidTarget(f"invalid room {name!r}: longer than {MAX_ROOM_LEN} bytes")
    if _has_control(name):
        raise InvalidTarget(f"invalid room {name!r}: control character")
    kind, sep, ident = name.partition(":")
    if not sep:
        raise InvalidTarget(f"invalid room {name!r}: a room is kind:id")
    if not kind or len(kind) > MAX_KIND_LEN or not set(kind) <= _KIND_CHARS:
        raise InvalidTarget(f"invalid room {name!r}: kind must be 1-32 of a-z, 0-9, _ or -")
    if not ident:
        raise InvalidTarget(f"invalid room {name!r}: empty id")
    return name


def check_tenant(tenant: str) -> str:
    """Returns ``tenant`` if it is a valid tenant id, else raises :class:`InvalidTarget`."""
    if not tenant:
        raise InvalidTarget("invalid tenant: empty")
    if len(tenant.encode()) > MAX_TENANT_LEN:
        raise InvalidTarget(f"invalid tenant: longer than {MAX_TENANT_LEN} bytes")
    if _has_control(tenant):
        raise InvalidTarget("invalid tenant: control character")
    return tenant


def check_namespace(ns: str) -> str:
    """Returns ``ns`` if it is a namespace (starts with ``/``)."""
    if not ns.startswith("/"):
        raise InvalidTarget(f"invalid namespace {ns!r}: it starts with /")
    return ns


def _encode_tenant(tenant: str) -> str:
    return tenant.replace("%", "%25").replace("/", "%2F").replace("@", "%40")


def scoped_room(tenant: Optional[str], room: str) -> str:
    """``room`` in ``tenant``'s scope: ``@{tenant}/{room}``, or ``room`` in the shared
    scope. A ``tenant:{id}`` room is always in tenant ``id``'s scope."""
    check_room(room)
    if room.startswith("tenant:"):
        own = check_tenant(room[len("tenant:") :])
        if tenant is not None and tenant != own:
            raise InvalidTarget(f"room {room!r} belongs to tenant {own!r}, not {tenant!r}")
        tenant = own
    if tenant is None:
        return room
    return f"@{_encode_tenant(check_tenant(tenant))}/{room}"


def audience(tenant: Optional[str], to: Sequence[str]) -> Optional[list[str]]:
    """The scoped rooms a message for ``to`` reaches; ``None`` for the whole namespace."""
    if tenant is not None:
        check_tenant(tenant)
    broadcast = not to or all(t == BROADCAST for t in to)
    if not broadcast and BROADCAST in to:
        raise InvalidTarget('"*" (the whole namespace) cannot be combined with rooms')
    if broadcast:
        return None if tenant is None else [scoped_room(tenant, f"tenant:{tenant}")]
    return [scoped_room(tenant, r) for r in to]


def channel(prefix: str, ns: str, tenant: Optional[str], to: Sequence[str]) -> str:
    """The one channel a message for ``to`` is published on."""
    rooms = audience(tenant, to)
    if rooms is not None and len(rooms) == 1:
        return f"{prefix}:room:{ns}#{rooms[0]}"
    return f"{prefix}:ns:{ns}"


def history_stream(prefix: str, ns: str) -> str:
    """The history stream of a recovery namespace."""
    return f"{prefix}:history:{ns}"


def upstream_stream(prefix: str, ns: str) -> str:
    """The stream client events routed to services are appended to."""
    return f"{prefix}:upstream:{ns}"


def legacy_to(
    room: Optional[str], user: Optional[str], doctype: Optional[str], docname: Optional[str]
) -> list[str]:
    """Frappe's routing rule: ``room``, else ``user:{user}``, else
    ``doc:{doctype}:{docname}``, else everyone (``[]``)."""
    if room is not None:
        return [check_room(room)]
    if user is not None:
        return [check_room(f"user:{user}")]
    if doctype is not None and docname is not None:
        return [check_room(f"doc:{doctype}:{docname}")]
    return []


def envelope(
    *,
    origin: str,
    ns: str,
    tenant: Optional[str],
    event: str,
    args: Sequence[Any],
    to: Sequence[str],
    except_: Sequence[str] = (),
    volatile: bool = False,
    socket: Optional[str] = None,
) -> dict[str, Any]:
    """An envelope (version 1) as the gateways write it: one argument goes in ``data``,
    several (or none) in ``args``; empty and absent fields are left out."""
    if not event:
        raise InvalidTarget("an event needs a name")
    env: dict[str, Any] = {
        "v": VERSION,
        "id": uuid.uuid4().hex,
        "ts": int(time.time() * 1000),
        "origin": origin,
        "ns": check_namespace(ns),
    }
    if tenant is not None:
        env["tenant"] = tenant
    env["event"] = event
    if len(args) == 1:
        env["data"] = args[0]
    elif args:
        env["args"] = list(args)
    if to:
        env["to"] = list(to)
    if except_:
        env["except"] = list(except_)
    if volatile:
        env["flags"] = {"volatile": True}
    if socket is not None:
        env["socket"] = socket
    # Validates every name before anything is sent.
    audience(tenant, to)
    for room in except_:
        scoped_room(tenant, room)
    return env


def encode(env: dict[str, Any]) -> bytes:
    """The envelope as the JSON the gateways accept."""
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()
