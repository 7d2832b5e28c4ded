"""What can go wrong, as exceptions that carry the reason. Nothing is dropped silently."""

from __future__ import annotations

from typing import Optional


class RoomcastError(Exception):
    """Base of every error this package raises."""


class InvalidTarget(RoomcastError, ValueError):
    """A room name, tenant, namespace or event that the gateways would refuse."""


class PublishFailed(RoomcastError):
    """The message was not published: Redis or the gateway is unreachable, or refused it.

    ``envelope_id`` is the message's id when it was built; ``status`` the HTTP status when
    a gateway answered.
    """

    def __init__(
        self, reason: str, envelope_id: Optional[str] = None, status: Optional[int] = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.envelope_id = envelope_id
        self.status = status


class Unsupported(RoomcastError):
    """The publisher cannot do this with the transports it has (e.g. acks need HTTP)."""


class SignatureError(RoomcastError):
    """A webhook call whose signature does not verify; ``kind`` says why:
    ``malformed``, ``stale`` or ``mismatch``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ConsumeError(RoomcastError):
    """The client-event stream could not be read or acknowledged (Redis unreachable)."""
