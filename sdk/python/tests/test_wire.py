"""The wire format, checked against the fixtures the Rust crates check too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from roomcast import InvalidTarget, Publisher, SignatureError, _wire, verify_signature

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wire.json"
FX: dict[str, Any] = json.loads(FIXTURES.read_text())


@pytest.mark.parametrize("case", FX["channels"], ids=lambda c: c["channel"])
def test_channel_names(case: dict[str, Any]) -> None:
    assert _wire.channel(case["prefix"], case["ns"], case["tenant"], case["to"]) == case["channel"]


@pytest.mark.parametrize("case", FX["streams"], ids=lambda c: c["ns"])
def test_stream_names(case: dict[str, Any]) -> None:
    assert _wire.history_stream(case["prefix"], case["ns"]) == case["history"]
    assert _wire.upstream_stream(case["prefix"], case["ns"]) == case["upstream"]


@pytest.mark.parametrize("name", FX["rooms"]["valid"])
def test_valid_rooms(name: str) -> None:
    assert _wire.check_room(name) == name


@pytest.mark.parametrize("name", FX["rooms"]["invalid"])
def test_invalid_rooms(name: str) -> None:
    with pytest.raises(InvalidTarget):
        _wire.check_room(name)


@pytest.mark.parametrize("case", FX["invalid_targets"], ids=lambda c: c["why"])
def test_invalid_targets(case: dict[str, Any]) -> None:
    with pytest.raises(InvalidTarget):
        _wire.channel("p", "/", case["tenant"], case["to"])


@pytest.mark.parametrize("case", FX["legacy_targets"], ids=str)
def test_legacy_routing(case: dict[str, Any]) -> None:
    got = _wire.legacy_to(case["room"], case["user"], case["doctype"], case["docname"])
    assert got == case["to"]


@pytest.mark.parametrize("case", FX["envelopes"], ids=lambda c: c["envelope"]["event"])
def test_envelopes_are_written_as_the_gateways_write_them(case: dict[str, Any]) -> None:
    want = case["envelope"]
    args = [want["data"]] if "data" in want else want.get("args", [])
    env = _wire.envelope(
        origin=want["origin"],
        ns=want["ns"],
        tenant=want.get("tenant"),
        event=want["event"],
        args=args,
        to=want.get("to", []),
        except_=want.get("except", []),
        volatile=want.get("flags", {}).get("volatile", False),
        socket=want.get("socket"),
    )
    decoded = json.loads(_wire.encode(env))
    assert isinstance(decoded.pop("id"), str)
    assert isinstance(decoded.pop("ts"), int)
    assert decoded == want


@pytest.mark.parametrize("case", FX["signatures"], ids=lambda c: c["result"])
def test_signatures(case: dict[str, Any]) -> None:
    def check() -> None:
        verify_signature(
            case["secret"],
            case["header"],
            case["body"].encode(),
            now=case["now"],
            tolerance=case["tolerance"],
        )

    if case["result"] == "ok":
        check()
    else:
        with pytest.raises(SignatureError) as err:
            check()
        assert err.value.kind == case["result"]


def test_the_recorded_publish_script_is_the_gateways() -> None:
    assert FX["recorded_publish"]["script"] == _wire.RECORDED_PUBLISH


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    # Nothing listens there: a send would fail with PublishFailed, not InvalidTarget.
    p = Publisher(redis.Redis(port=1, socket_connect_timeout=0.5))
    with pytest.raises(InvalidTarget):
        p.to_room("no-kind")
    with pytest.raises(InvalidTarget):
        p.in_tenant("acme").to_tenant("globex").emit("x")
    with pytest.raises(InvalidTarget):
        p.in_namespace("chat")
    with pytest.raises(InvalidTarget):
        p.to_user("ann").emit("")
