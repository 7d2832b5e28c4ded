"""Interop cases for the python-socketio client against a running Roomcast cluster.

One JSON line per case on stdout; the harness draws the table. Configuration comes in the
INTEROP environment variable (JSON), written by the harness.
"""

import base64
import json
import os
import sys
import threading
import time
import urllib.request

import socketio

CFG = json.loads(os.environ.get("INTEROP", "{}"))
USERS = CFG.get("users", {})
WAIT = 5.0
OPENED = []


class CaseFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CaseFailed(message)


def run_case(name, body):
    started = time.monotonic()
    try:
        detail = body() or ""
        ok = True
    except Exception as err:  # every failure becomes a red cell, never a crash
        detail = f"{type(err).__name__}: {err}"
        ok = False
    ms = int((time.monotonic() - started) * 1000)
    print(json.dumps({"case": name, "ok": ok, "detail": detail, "ms": ms}), flush=True)


def http_json(url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def publish(i, body):
    """POST /v1/publish on node i, in the suite users' tenant."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CFG['key']}"}
    return http_json(f"{CFG['nodes'][i]}/v1/publish", {"tenant": CFG["tenant"], **body}, headers)


def accepted(i, body):
    status, answer = publish(i, body)
    check(status == 202, f"publish answered {status}: {answer}")


def restart_node(i):
    req = urllib.request.Request(f"{CFG['control']}/restart/{i}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=60) as res:
        check(res.status == 200, f"restart of node {i} answered {res.status}")


class Conn:
    """One python-socketio client with every received event recorded in order."""

    def __init__(self, ns="/", **client_options):
        self.ns = ns
        debug = bool(os.environ.get("INTEROP_DEBUG"))
        self.sio = socketio.Client(
            **{"reconnection": False, "logger": debug, "engineio_logger": debug, **client_options}
        )
        self.events = []
        self.cond = threading.Condition()
        self.refusal = None
        self.sio.on("*", self._record, namespace=ns)
        self.sio.on("connect_error", self._refused, namespace=ns)
        OPENED.append(self)

    def _record(self, event, *args):
        with self.cond:
            self.events.append((event, args))
            self.cond.notify_all()

    def _refused(self, data=None):
        with self.cond:
            self.refusal = data.get("message") if isinstance(data, dict) else str(data)
            self.cond.notify_all()

    def connect(self, i, token, **options):
        self.sio.connect(
            CFG["nodes"][i],
            auth={"token": token} if token is not None else None,
            namespaces=[self.ns],
            socketio_path=CFG["path"],
            wait_timeout=WAIT,
            **options,
        )
        args, _ = self.expect("connected")
        return args[0]

    def expect(self, name, timeout=WAIT):
        """The next event called `name` (its arguments) and the events before it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, (event, args) in enumerate(self.events):
                    if event == name:
                        before = self.events[:at]
                        del self.events[: at + 1]
                        return args, before
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaseFailed(f"timed out waiting for event {name!r}")
                self.cond.wait(left)

    def call(self, event, data):
        return self.sio.call(event, data, namespace=self.ns, timeout=WAIT)

    def close(self):
        self.sio.disconnect()


def refused(i, token, ns="/"):
    """The message a refused connection attempt reports."""
    conn = Conn(ns)
    try:
        conn.connect(i, token)
    except socketio.exceptions.ConnectionError:
        pass
    else:
        raise CaseFailed("connected although it should not")
    with conn.cond:
        conn.cond.wait_for(lambda: conn.refusal is not None, WAIT)
    return conn.refusal or ""


def token(user):
    return CFG["tokens"][user]


ALICE, BOB = USERS.get("alice"), USERS.get("bob")


def websocket_only():
    c = Conn()
    c.connect(0, token(ALICE), transports=["websocket"])
    check(c.sio.transport() == "websocket", f"transport {c.sio.transport()}")
    accepted(1, {"event": "ping-ws", "to": [f"user:{ALICE}"], "data": 1})
    args, _ = c.expect("ping-ws")
    check(args == (1,), f"got {args}")
    c.close()


def polling_only():
    c = Conn()
    c.connect(0, token(ALICE), transports=["polling"])
    check(c.sio.transport() == "polling", f"transport {c.sio.transport()}")
    accepted(1, {"event": "ping-poll", "to": [f"user:{ALICE}"], "data": "p"})
    args, _ = c.expect("ping-poll")
    check(args == ("p",), f"got {args}")
    c.close()


def upgrade():
    c = Conn()
    c.connect(0, token(ALICE))
    check(c.sio.transport() == "websocket", f"did not upgrade: {c.sio.transport()}")
    accepted(2, {"event": "after-upgrade", "to": [f"user:{ALICE}"], "data": True})
    c.expect("after-upgrade")
    c.close()


def auth():
    c = Conn()
    info = c.connect(1, token(ALICE))
    check(info["user_id"] == ALICE, f"user {info['user_id']}")
    c.close()
    wrong = refused(1, token("wrong_secret"))
    check("signature" in wrong, f"wrong secret: {wrong!r}")
    expired = refused(1, token("expired"))
    check("expired" in expired, f"expired: {expired!r}")
    missing = refused(1, None)
    check("token" in missing.lower(), f"missing: {missing!r}")
    return f'refusals: "{wrong}" / "{expired}" / "{missing}"'


def connected_event():
    c = Conn()
    info = c.connect(2, token(ALICE))
    check(info["message"] == "connected", str(info))
    check(info["user_id"] == ALICE and info["tenant_id"] == CFG["tenant"], str(info))
    check(info["node_id"] == CFG["node_ids"][2], f"node {info['node_id']}")
    check(sorted(info["rooms"]) == sorted([f"user:{ALICE}", f"tenant:{CFG['tenant']}"]), str(info))
    c.close()


def join_leave():
    c = Conn()
    c.connect(0, token(ALICE))
    room = f"doc:Task:{ALICE}"
    ok = c.call("join", room)
    check(ok == {"ok": True, "room": room}, f"join: {ok}")
    denied = c.call("join", "secret:x")
    check(denied["ok"] is False and "not allowed" in denied["error"], str(denied))
    invalid = c.call("join", "lobby")
    check(invalid["ok"] is False, str(invalid))
    accepted(1, {"event": "in-room", "to": [room], "data": 1})
    c.expect("in-room")
    left = c.call("leave", {"room": room})
    check(left["ok"] is True, f"leave: {left}")
    accepted(1, {"event": "in-room", "to": [room], "data": 2})
    accepted(1, {"event": "marker", "to": [f"user:{ALICE}"]})
    _, before = c.expect("marker")
    check(all(e != "in-room" for e, _ in before), "received a room event after leaving")
    c.close()


def cross_node():
    a, b = Conn(), Conn()
    a.connect(0, token(ALICE))
    b.connect(2, token(BOB))
    room = f"room:x-{ALICE}"
    for c in (a, b):
        check(c.call("join", room)["ok"], "join")
    accepted(1, {"event": "shared", "to": [room], "data": {"n": 1}})
    accepted(1, {"event": "for-bob", "to": [f"user:{BOB}"], "data": {"n": 2}})
    accepted(1, {"event": "marker", "to": [room]})
    for c in (a, b):
        args, _ = c.expect("shared")
        check(args[0]["n"] == 1, str(args))
    args, _ = b.expect("for-bob")
    check(args[0]["n"] == 2, str(args))
    _, before = a.expect("marker")
    check(all(e not in ("shared", "for-bob") for e, _ in before), "duplicate or misrouted")
    a.close()
    b.close()


def chat():
    a, b = Conn(), Conn()
    a.connect(0, token(ALICE))
    b.connect(2, token(BOB))
    room = f"room:chat-{ALICE}"
    for c in (a, b):
        check(c.call("join", room)["ok"], "join")
    sent = a.call("publish", {"to": room, "event": "send_message", "data": {"text": "hi"}})
    check(sent["ok"] is True and isinstance(sent.get("id"), str), str(sent))
    args, _ = b.expect("send_message")
    check(args[0]["text"] == "hi", str(args))
    denied = a.call("publish", {"to": f"doc:Task:{ALICE}", "event": "x", "data": 1})
    check(denied["ok"] is False and "not allowed to publish" in denied["error"], str(denied))
    # The sender is left out: Bob's reply is the first chat event Alice sees.
    b.call("publish", {"to": room, "event": "send_message", "data": {"text": "yo"}})
    args, _ = a.expect("send_message")
    check(args[0]["text"] == "yo", str(args))
    a.close()
    b.close()


def services():
    c = Conn()
    c.connect(1, token(ALICE))
    # Through the Redis Stream: acked once appended, confirmed by the service to this socket.
    queued = c.call("notification_read", {"id": 7})
    check(queued["ok"] is True and isinstance(queued.get("id"), str), str(queued))
    args, _ = c.expect("notification_read_confirmed")
    check(args[0]["id"] == 7, str(args))
    # Through the webhook: the service's answer is the ack.
    answer = c.sio.call("rpc.echo", (1, "two"), namespace="/", timeout=WAIT)
    check(answer["ok"] is True and answer["user"] == ALICE, str(answer))
    check(answer["echo"] == [1, "two"], str(answer))
    unrouted = c.call("nobody_listens", 1)
    check(unrouted["ok"] is False and "no handler" in unrouted["error"], str(unrouted))
    c.close()


def namespaces():
    root, ns = Conn(), Conn(CFG["namespace"])
    root.connect(0, token(ALICE))
    info = ns.connect(1, token(ALICE))
    check(info["user_id"] == ALICE, "no connected on the namespace")
    accepted(2, {"event": "ns-only", "ns": CFG["namespace"], "to": [f"user:{ALICE}"], "data": 1})
    accepted(2, {"event": "marker", "to": [f"user:{ALICE}"]})
    ns.expect("ns-only")
    _, before = root.expect("marker")
    check(all(e != "ns-only" for e, _ in before), "namespace event leaked into /")
    unknown = refused(0, token(ALICE), "/nope")
    check("namespace" in unknown.lower(), f"unknown namespace: {unknown!r}")
    root.close()
    ns.close()


def binary(transport):
    c = Conn()
    c.connect(2, token(ALICE), transports=[transport])
    data = bytes(range(256))
    accepted(0, {
        "event": "file",
        "to": [f"user:{ALICE}"],
        "data": {"name": "all-bytes", "content": {"_placeholder": True, "num": 0}},
        "attachments": [base64.b64encode(data).decode()],
    })
    args, _ = c.expect("file")
    got = args[0]["content"]
    check(isinstance(got, bytes), f"content is {type(got).__name__}")
    check(got == data, f"got {len(got)} bytes, not the 256 sent")
    c.close()
    return f"received bytes of length {len(got)}"


def server_ack():
    a, b = Conn(), Conn()
    a.sio.on("confirm", lambda data: {"seen": data["n"], "on": "a"})
    b.sio.on("confirm", lambda data: {"seen": data["n"], "on": "b"})
    a.connect(0, token(BOB))
    b.connect(1, token(BOB))
    status, body = publish(2, {
        "event": "confirm", "to": [f"user:{BOB}"], "data": {"n": 7}, "ack_timeout_ms": 3000,
    })
    check(status == 200, f"status {status}: {body}")
    answers = sorted(f"{x.get('data', {}).get('on')}:{x.get('data', {}).get('seen')}" for x in body["acks"])
    check(answers == ["a:7", "b:7"], f"acks {body['acks']}")
    a.close()
    b.close()


def reconnect():
    c = Conn(reconnection=True, reconnection_delay=0.1, reconnection_delay_max=0.5)
    dropped = threading.Event()
    c.sio.on("disconnect", lambda *reason: dropped.set())
    c.connect(2, token(ALICE), transports=["websocket"])
    restart_node(2)
    check(dropped.wait(15), "no disconnect seen")
    args, _ = c.expect("connected", timeout=15)
    check(args[0]["node_id"] == CFG["node_ids"][2], f"reconnected to {args[0]['node_id']}")
    accepted(0, {"event": "welcome-back", "to": [f"user:{ALICE}"], "data": 1})
    c.expect("welcome-back")
    c.close()
    return "rooms back after reconnect"


def upstreams_of(sid):
    """The gateways nginx sent session `sid`'s requests to (the harness's access log)."""
    seen = set()
    with open(CFG["upstream_log"], encoding="utf-8") as log:
        for line in log:
            parts = line.split("|")
            if len(parts) < 2 or parts[0] != sid:
                continue
            seen.update(a.strip() for a in parts[1].split(","))
    return sorted(a for a in seen if a in CFG["gateways"])


def no_sticky_polling():
    """Polling only through nginx's default site (no affinity), held for hold_ms."""
    c = Conn()
    dropped = threading.Event()
    c.sio.on("disconnect", lambda *reason: dropped.set())
    c.sio.on("nosticky", lambda data: {"seen": data["n"], "by": "python"})
    c.sio.connect(
        CFG["site"],
        auth={"token": token(ALICE)},
        socketio_path=CFG["path"],
        wait_timeout=WAIT,
        transports=["polling"],
    )
    c.expect("connected")
    sid = c.sio.eio.sid
    room = f"room:nosticky-py-{ALICE}"
    joined = c.call("join", room)
    check(joined["ok"] is True, f"join: {joined}")
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CFG['key']}"}
    rounds = 0
    until = time.monotonic() + CFG["hold_ms"] / 1000
    while time.monotonic() < until:
        body = {"tenant": CFG["tenant"], "event": "nosticky", "to": [room], "data": {"n": rounds},
                "ack_timeout_ms": 5000}
        status, answer = http_json(f"{CFG['site']}/v1/publish", body, headers)
        check(status == 200, f"round {rounds}: publish answered {status}: {answer}")
        acks = answer["acks"]
        check(len(acks) == 1 and acks[0].get("data", {}).get("seen") == rounds, f"acks {acks}")
        again = c.call("join", room)
        check(again["ok"] is True, f"round {rounds}: join ack {again}")
        check(not dropped.is_set(), f"disconnected after {rounds} rounds")
        rounds += 1
        time.sleep(5)
    check(not dropped.is_set() and c.sio.eio.sid == sid, "the session did not last")
    check(c.sio.transport() == "polling", f"transport {c.sio.transport()}")
    nodes = upstreams_of(sid)
    check(len(nodes) == 3, f"its requests reached {len(nodes)} gateway(s): {nodes}")
    c.close()
    return f"{rounds} publish+ack rounds in {CFG['hold_ms'] // 1000} s over polling; requests served by 3 gateways"


NO_STICKY_CASES = [
    ("no sticky: polling only, through nginx without affinity", no_sticky_polling),
]

CASES = [
    ("websocket only", websocket_only),
    ("polling only", polling_only),
    ("polling -> websocket upgrade", upgrade),
    ("auth (good, wrong secret, expired, missing)", auth),
    ("connected event", connected_event),
    ("join/leave with acks (client emitWithAck)", join_leave),
    ("cross-node delivery", cross_node),
    ("chat: client publish across nodes", chat),
    ("events to services: stream consumer and webhook", services),
    ("namespaces", namespaces),
    ("binary payloads over websocket", lambda: binary("websocket")),
    ("binary payloads over polling", lambda: binary("polling")),
    ("server emit-with-ack", server_ack),
    ("auto-reconnect after its node stops", reconnect),
]

if __name__ == "__main__":
    only = os.environ.get("INTEROP_CASE")
    for name, body in NO_STICKY_CASES if CFG.get("site") else CASES:
        if not only or only in name:
            run_case(name, body)
    for conn in OPENED:
        try:
            conn.sio.disconnect()
        except Exception:
            pass
    sys.stdout.flush()
    os._exit(0)
