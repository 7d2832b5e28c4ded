"""Checking that a webhook call comes from a gateway (``UPSTREAM_ROUTES=…=webhook``).

The gateways sign each call in ``x-roomcast-signature``: ``t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<body>">`` with ``UPSTREAM_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional, Union

from .errors import SignatureError

#: The header carrying the signature.
SIGNATURE_HEADER = "x-roomcast-signature"


def _bytes(v: Union[str, bytes]) -> bytes:
    return v.encode() if isinstance(v, str) else v


def sign(secret: Union[str, bytes], body: bytes, t: Optional[int] = None) -> str:
    """The header value a gateway would send for ``body`` at ``t`` (now by default)."""
    t = int(time.time()) if t is None else t
    mac = hmac.new(_bytes(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: Union[str, bytes],
    header: str,
    body: bytes,
    now: Optional[int] = None,
    tolerance: int = 300,
) -> None:
    """Checks the signature header of a call with raw body ``body``; raises
    :class:`SignatureError` (``malformed``, ``stale`` — more than ``tolerance`` seconds
    from ``now`` — or ``mismatch``). Compares in constant time."""
    t: Optional[int] = None
    v1: Optional[bytes] = None
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            t = int(value) if value.isdigit() else None
        elif key == "v1":
            try:
                v1 = bytes.fromhex(value)
            except ValueError:
                v1 = None
    if t is None or v1 is None:
        raise SignatureError("malformed", "malformed signature header")
    now = int(time.time()) if now is None else now
    if abs(now - t) > tolerance:
        raise SignatureError("stale", "signature timestamp outside the tolerance")
    expected = hmac.new(_bytes(secret), f"{t}.".encode() + body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, v1):
        raise SignatureError("mismatch", "signature mismatch")
