"""Publishes through python-socketio's and Flask-SocketIO's Redis message queues, as a
backend does today, for the compat cases (`js/compat.mjs` runs it).

Usage: python compat_publish.py MODE, with the INTEROP environment variable (JSON)
holding `redis` (the URL), `room`, and `tag` (added to every payload). MODE is `sync`
(RedisManager), `async` (AsyncRedisManager), `flask` (SocketIO(message_queue=...)) or
`bad` (a malformed pickle, a pickle that names a function, and MessagePack garbage on the
Node channel, then one good message). Prints one JSON line with the version used.
"""

import asyncio
import json
import os
import pickle
import sys

import redis
import socketio

CFG = json.loads(os.environ["INTEROP"])
URL, ROOM, TAG = CFG["redis"], CFG["room"], CFG["tag"]
VERSION = getattr(socketio, "__version__", None)
if VERSION is None:
    from importlib.metadata import version

    VERSION = version("python-socketio")


def payload(kind):
    return {"kind": kind, "tag": TAG, "version": VERSION}


def sync():
    mgr = socketio.RedisManager(URL, write_only=True)
    mgr.emit("py-room", payload("sync"), room=ROOM)
    mgr.emit("py-all", payload("sync"))


async def run_async():
    mgr = socketio.AsyncRedisManager(URL, write_only=True)
    await mgr.emit("py-room", payload("async"), room=ROOM)
    await mgr.emit("py-all", payload("async"))


def flask():
    from flask_socketio import SocketIO

    sio = SocketIO(message_queue=URL)
    sio.emit("py-room", payload("flask"), to=ROOM)


class NamesAFunction:
    """Pickles as a call of os.system: what a reader must never run."""

    def __reduce__(self):
        return (os.system, ("echo compat-pickle-was-executed",))


def bad():
    r = redis.Redis.from_url(URL)
    r.publish("socketio", b"\x80\x04\x95not a pickle")
    r.publish(
        "socketio",
        pickle.dumps({"method": "emit", "event": "py-evil", "data": NamesAFunction(), "room": ROOM}),
    )
    r.publish("socket.io#/#", b"\xc1\x93garbage")
    socketio.RedisManager(URL, write_only=True).emit("py-room", payload("after-bad"), room=ROOM)


MODE = sys.argv[1]
if MODE == "sync":
    sync()
elif MODE == "async":
    asyncio.run(run_async())
elif MODE == "flask":
    flask()
elif MODE == "bad":
    bad()
else:
    sys.exit(f"unknown mode {MODE}")
print(json.dumps({"mode": MODE, "version": VERSION}), flush=True)
