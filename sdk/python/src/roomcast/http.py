"""The gateways' HTTP API: publish (with acknowledgements), history and presence.

Standard library only (``urllib``); the asyncio flavour runs these calls on a thread.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional

from .errors import PublishFailed


class HttpApi:
    """One gateway (or the balancer in front of the cluster) and the publish key.

    >>> api = HttpApi("http://gateway:3000", "the-publish-key")
    """

    def __init__(self, url: str, api_key: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HttpApi({self.url!r})"

    def _call(self, method: str, path: str, body: Optional[bytes] = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={
                "Authorization": f"Bearer {self._key}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as res:
                status, raw = res.status, res.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise PublishFailed(f"gateway unreachable at {self.url}: {e}") from e
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw.decode(errors="replace")}
        return status, answer

    def publish(self, envelope: dict[str, Any], ack_timeout_ms: Optional[int] = None) -> Any:
        """``POST /v1/publish``; the gateway's answer (``{"id"}``, or ``{"id", "acks"}``
        with ``ack_timeout_ms``). Raises :class:`PublishFailed` unless it was accepted."""
        body = dict(envelope)
        if ack_timeout_ms is not None:
            body["ack_timeout_ms"] = ack_timeout_ms
        status, answer = self._call("POST", "/v1/publish", json.dumps(body).encode())
        if status not in (200, 202):
            reason = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise PublishFailed(f"gateway answered {status}: {reason}", envelope.get("id"), status)
        return answer

    def _room(self, room: str, what: str, ns: str, tenant: Optional[str], **extra: Any) -> Any:
        query = {"ns": ns, **({"tenant": tenant} if tenant else {}), **extra}
        path = (
            f"/v1/rooms/{urllib.parse.quote(room, safe='')}/{what}?"
            f"{urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})}"
        )
        status, answer = self._call("GET", path)
        if status != 200:
            reason = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise PublishFailed(f"gateway answered {status}: {reason}", status=status)
        return answer

    def history(
        self,
        room: str,
        *,
        ns: str = "/",
        tenant: Optional[str] = None,
        since: Optional[str] = None,
        limit: int = 100,
    ) -> Any:
        """One page of a recovery namespace's room history: ``{"messages": [{"offset",
        "id", "ts", "event", "args"}], "next"}``; pass ``next`` as ``since``."""
        return self._room(room, "history", ns, tenant, since=since, limit=limit)

    def presence(self, room: str, *, ns: str = "/", tenant: Optional[str] = None) -> Any:
        """Who is in ``room`` on every node: ``{"users": [{"user", "sockets"}], "count",
        "sockets", "nodes_answered", "nodes_expected"}``."""
        return self._room(room, "presence", ns, tenant)

    def act_on_sockets(
        self,
        action: str,
        *,
        user: Optional[str] = None,
        room: Optional[str] = None,
        socket: Optional[str] = None,
        tenant: Optional[str] = None,
        ns: str = "/",
        reason: Optional[str] = None,
        rooms: Optional[list[str]] = None,
    ) -> Any:
        """The server API: ``action`` (``disconnect``, ``join`` or ``leave``) on the sockets
        of ``user``, ``room`` or ``socket`` (exactly one) in ``tenant``'s scope, on every
        node; ``{"sockets", "count", "nodes_answered", "nodes_expected"}``."""
        body: dict[str, Any] = {"ns": ns}
        for key, value in (
            ("tenant", tenant),
            ("user", user),
            ("room", room),
            ("socket", socket),
            ("reason", reason),
            ("rooms", rooms),
        ):
            if value is not None:
                body[key] = value
        status, answer = self._call("POST", f"/v1/sockets/{action}", json.dumps(body).encode())
        if status != 200:
            reason_ = answer.get("error", answer) if isinstance(answer, dict) else answer
            raise PublishFailed(f"gateway answered {status}: {reason_}", status=status)
        return answer

    def room_sockets(self, room: str, *, ns: str = "/", tenant: Optional[str] = None) -> Any:
        """The sockets in ``room`` on every node."""
        return self._room(room, "sockets", ns, tenant)
