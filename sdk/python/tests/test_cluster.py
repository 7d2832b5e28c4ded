"""The SDK against a real 3-node cluster (started by ``cargo xtask interop``): what it
publishes reaches the official JS client on another node, in its tenant only."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio
from conftest import CFG

import roomcast
import roomcast.frappe
from roomcast import AsyncPublisher, Consumer, HttpApi, Publisher, PublishFailed
from roomcast.integrations import django_batch, sqlalchemy_batch

pytestmark = pytest.mark.cluster

PREFIX = CFG.get("prefix", "roomcast")


def token(user: str, other: bool = False) -> str:
    cfg = CFG["other"] if other else CFG
    return str(cfg["tokens"][cfg["users"][user]])


def user(name: str, other: bool = False) -> str:
    return str((CFG["other"] if other else CFG)["users"][name])


def publisher(tenant: str | None = None) -> Publisher:
    p = Publisher(redis.Redis.from_url(CFG["redis"]), prefix=PREFIX, origin="sdk-python")
    return p.in_tenant(tenant or CFG["tenant"])


def test_every_target_kind_reaches_the_js_client_in_its_tenant_only(listeners: Any) -> None:
    rooms = ("doc:Task:1", "room:chat-1")
    ann = listeners(CFG["nodes"][1], token("alice"), rooms)
    other = listeners(CFG["nodes"][2], token("alice", other=True), rooms)
    p = publisher()
    p.to_user(user("alice")).emit("to_user", {"n": 1})
    p.to_tenant(CFG["tenant"]).emit("to_tenant", 2)
    p.to_doc("Task", "1").emit("to_doc", "three", 3)
    p.to_room("room:chat-1").emit("to_room")
    p.to_doc("Task", "1").to_room("room:chat-1").to_user(user("alice")).emit("several")
    p.broadcast().emit("broadcast")
    p.to_doc("Task", "1").except_user(user("alice")).emit("excepted")
    p.to_doc("Task", "1").volatile().emit("volatile")
    p.to_user(user("alice")).emit("marker")
    assert ann.events_until("marker") == [
        "to_user",
        "to_tenant",
        "to_doc",
        "to_room",
        "several",
        "broadcast",
        "volatile",
    ]
    # The arguments as Socket.IO delivers them.
    p.to_doc("Task", "1").emit("args", "three", 3)
    assert ann.expect("args") == ["three", 3]
    # The same names in another tenant got nothing of it.
    publisher(CFG["other"]["tenant"]).to_user(user("alice", other=True)).emit("marker")
    assert other.events_until("marker") == []


def test_http_publish_and_acknowledgements(listeners: Any) -> None:
    ann = listeners(CFG["nodes"][2], token("alice"), ack={"seen": True})
    p = Publisher(http=HttpApi(CFG["nodes"][0], CFG["key"]), origin="sdk-python")
    p = p.in_tenant(CFG["tenant"])
    message_id = p.to_user(user("alice")).emit("over_http", 1)
    assert ann.expect("over_http") == [1]
    assert message_id
    acks = p.to_user(user("alice")).emit_with_ack("please_ack", {"n": 2}, timeout_ms=3000)
    assert acks == [{"sid": ann.sid, "data": {"seen": True}}]
    bad = Publisher(http=HttpApi(CFG["nodes"][0], "wrong-key"))
    with pytest.raises(PublishFailed) as err:
        bad.to_user("ann").emit("x")
    assert err.value.status == 401


def test_after_commit_with_sqlalchemy_on_sqlite(listeners: Any) -> None:
    from sqlalchemy import Column, Integer, String, create_engine
    from sqlalchemy.orm import Session, declarative_base

    base = declarative_base()

    class Task(base):  # type: ignore[valid-type,misc]
        __tablename__ = "tasks"
        id = Column(Integer, primary_key=True)
        title = Column(String)

    engine = create_engine("sqlite://")
    base.metadata.create_all(engine)
    ann = listeners(CFG["nodes"][1], token("alice"))
    p = publisher()
    with Session(engine) as session:
        session.add(Task(id=1, title="committed"))
        batch = sqlalchemy_batch(p, session)
        p.to_user(user("alice")).stage(batch, "task_saved", 1)
        # Nothing is sent before the commit.
        p.to_user(user("alice")).emit("before_commit")
        assert ann.events_until("before_commit") == []
        session.commit()
        assert ann.expect("task_saved") == [1]

        session.add(Task(id=2, title="rolled back"))
        batch = sqlalchemy_batch(p, session)
        p.to_user(user("alice")).stage(batch, "task_saved", 2)
        session.rollback()
        assert len(batch) == 0
    p.to_user(user("alice")).emit("marker")
    assert ann.events_until("marker") == []


def test_after_commit_with_django(listeners: Any) -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        )
        django.setup()
    from django.db import transaction

    ann = listeners(CFG["nodes"][2], token("alice"))
    p = publisher()
    with transaction.atomic():
        batch = django_batch(p)
        p.to_user(user("alice")).stage(batch, "django_saved", 1)
    assert ann.expect("django_saved") == [1]

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        batch = django_batch(p)
        p.to_user(user("alice")).stage(batch, "django_saved", 2)
        raise Abort
    p.to_user(user("alice")).emit("marker")
    assert ann.events_until("marker") == []


def test_consumer_reads_reclaims_after_a_crash_and_answers_the_socket(listeners: Any) -> None:
    ns = CFG["namespace"]
    ann = listeners(CFG["nodes"][1], token("alice"), namespace=ns)
    r = redis.Redis.from_url(CFG["redis"])
    group = f"sdk-{uuid.uuid4().hex[:8]}"
    crashed = Consumer(r, group, "worker-1", prefix=PREFIX, ns=ns)
    survivor = Consumer(r, group, "worker-2", prefix=PREFIX, ns=ns)
    ann.emit("notification_read", {"id": 42})
    got = [d for d in crashed.next(block_ms=5000) if d.event and d.event.args == [{"id": 42}]]
    assert len(got) == 1, got
    event = got[0].event
    assert event is not None
    assert (event.user, event.tenant, event.sid) == (user("alice"), CFG["tenant"], ann.sid)
    # worker-1 dies without acknowledging; worker-2 takes the entry over.
    time.sleep(0.3)
    taken = survivor.reclaim(min_idle_ms=200)
    assert [d.entry for d in taken] == [got[0].entry]
    assert taken[0].event is not None
    publisher().reply_to_socket(taken[0].event).emit("sdk_confirmed", 42)
    assert ann.expect("sdk_confirmed") == [42]
    survivor.ack(taken[0])
    assert survivor.reclaim(min_idle_ms=0) == []


def test_a_webhook_signature_made_by_the_gateway_verifies(listeners: Any) -> None:
    ann = listeners(CFG["nodes"][0], token("alice"))
    marker = uuid.uuid4().hex
    ann.emit("rpc.echo", marker, ack_id=1)
    assert ann.next(lambda m: m.get("acked") == 1)["args"][0]["ok"] is True
    with urllib.request.urlopen(CFG["hook_last"], timeout=5) as res:
        calls = json.loads(res.read())
    header, body = next((c["header"], c["body"]) for c in calls if marker in c["body"])
    roomcast.verify_signature(CFG["hook_secret"], header, body.encode())
    with pytest.raises(roomcast.SignatureError) as err:
        roomcast.verify_signature(CFG["hook_secret"], header, body.replace(marker, "x").encode())
    assert err.value.kind == "mismatch"


def test_history_and_presence_over_http(listeners: Any) -> None:
    ns = CFG["recovery_namespace"]
    room = f"doc:Hist:{uuid.uuid4().hex[:8]}"
    ann = listeners(CFG["nodes"][1], token("alice"), (room,), namespace=ns)
    p = Publisher(
        redis.Redis.from_url(CFG["redis"]),
        http=HttpApi(CFG["nodes"][2], CFG["key"]),
        prefix=PREFIX,
    )
    p = (
        p.in_tenant(CFG["tenant"])
        .in_namespace(ns)
        .with_recovery([ns], window_ms=CFG["recovery_window_ms"])
    )
    for i in range(3):
        p.to_room(room).emit("recorded", i)
    # Recorded: each event carries its offset as its last argument.
    offsets = [ann.expect("recorded")[-1] for _ in range(3)]
    page = p.history(room, limit=2)
    assert [m["args"] for m in page["messages"]] == [[0], [1]]
    assert [m["offset"] for m in page["messages"]] == offsets[:2]
    rest = p.history(room, since=page["next"], limit=10)
    assert [m["args"] for m in rest["messages"]] == [[2]]
    here = p.presence(room)
    assert here["users"] == [{"user": user("alice"), "sockets": 1}]
    assert here["nodes_answered"] == here["nodes_expected"] == 3


def test_redis_down_raises_with_the_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = Publisher(redis.Redis(port=port, socket_connect_timeout=1), prefix=PREFIX)
    with pytest.raises(PublishFailed) as err:
        p.in_tenant("acme").to_user("ann").emit("lost")
    assert "Redis" in err.value.reason and "connect" in err.value.reason.lower()
    assert err.value.envelope_id


def test_asyncio_flavour(listeners: Any) -> None:
    ann = listeners(CFG["nodes"][2], token("alice"))

    async def run() -> None:
        p = AsyncPublisher(redis.asyncio.Redis.from_url(CFG["redis"]), prefix=PREFIX)
        p = p.in_tenant(CFG["tenant"])
        await p.to_user(user("alice")).emit("from_asyncio", 1)
        batch = p.batch()
        p.to_user(user("alice")).stage(batch, "async_batch", 2)
        assert await batch.commit()

    asyncio.run(run())
    assert ann.expect("from_asyncio") == [1]
    assert ann.expect("async_batch") == [2]


def test_frappe_style_publish_realtime(listeners: Any) -> None:
    ann = listeners(CFG["nodes"][1], token("alice"), ("doc:Task:T-9",))
    p = publisher()
    pending: list[Any] = []
    roomcast.frappe.configure(p, on_commit=pending.append)
    roomcast.frappe.publish_realtime(
        "list_update", {"doctype": "Task"}, doctype="Task", docname="T-9"
    )
    assert ann.expect("list_update") == [{"doctype": "Task"}]
    roomcast.frappe.publish_realtime("notify", "hi", user=user("alice"), after_commit=True)
    p.to_user(user("alice")).emit("marker")
    assert ann.events_until("marker") == [], "after_commit waits for the commit"
    for run in pending:  # the transaction commits
        run()
    assert ann.expect("notify") == ["hi"]


def test_the_readme_example_runs_in_a_fresh_virtualenv(listeners: Any) -> None:
    import os
    import re
    import subprocess
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    assert "fresh_python" in CFG, "the harness installs sdk/python into a fresh virtualenv"
    ann = listeners(CFG["nodes"][2], token("alice"))
    env = {
        **os.environ,
        "REDIS_URL": CFG["redis"],
        "ROOMCAST_TENANT": CFG["tenant"],
        "ROOMCAST_USER": user("alice"),
    }
    out = subprocess.run(
        [CFG["fresh_python"], "-c", example],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("published ")
    assert ann.expect("invoice.paid") == [{"id": 7}]


def test_server_api_disconnects_and_joins_a_users_sockets_on_another_node(listeners: Any) -> None:
    api = HttpApi(CFG["nodes"][0], CFG["key"])
    tenant = CFG["tenant"]
    ann = listeners(CFG["nodes"][2], token("alice"))
    other = listeners(CFG["nodes"][1], token("alice", other=True))
    room = f"doc:Srv:{uuid.uuid4().hex[:8]}"
    joined = api.act_on_sockets("join", user=user("alice"), tenant=tenant, rooms=[room])
    assert [s["sid"] for s in joined["sockets"]] == [ann.sid]
    publisher().to_room(room).emit("after_join", 1)
    assert ann.expect("after_join") == [1]
    listed = api.room_sockets(room, tenant=tenant)
    assert [s["sid"] for s in listed["sockets"]] == [ann.sid]
    # Across tenants: a room of another tenant is refused, and the other tenant's
    # same-named user is not touched by this tenant's request (nor the reverse).
    with pytest.raises(PublishFailed) as err:
        api.act_on_sockets("join", user=user("alice"), tenant=tenant, rooms=["tenant:someone-else"])
    assert err.value.status == 400
    foreign = api.act_on_sockets("disconnect", socket=other.sid, tenant=tenant, reason="not yours")
    assert foreign["count"] == 0
    kicked = api.act_on_sockets(
        "disconnect", user=user("alice"), tenant=tenant, reason="account suspended"
    )
    assert [s["sid"] for s in kicked["sockets"]] == [ann.sid]
    assert ann.expect("disconnect_reason") == [
        {"reason": "disconnected_by_server", "message": "account suspended"}
    ]
    assert ann.next(lambda m: "disconnect" in m)["disconnect"] == "io server disconnect"
    publisher(CFG["other"]["tenant"]).to_user(user("alice", other=True)).emit("marker")
    assert other.events_until("marker") == []
