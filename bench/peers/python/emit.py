"""The benchmark's python-socketio publisher: a backend emitting through
python-socketio's Redis message queue, unchanged (`bench --compat`).

Usage: python emit.py REDIS_URL. Prints `ready`, then for each line `ROOM POINT SEQ` on
stdin emits `msg` with the benchmark's payload (the send time in microseconds, point,
sequence, padding to about 100 bytes) to ROOM with `RedisManager(write_only=True)`.
"""

import sys
import time

import socketio

PAD = "roomcast-benchmark-payload-padding-0123456789abcdef"

mgr = socketio.RedisManager(sys.argv[1], write_only=True)
print("ready", flush=True)
for line in sys.stdin:
    room, point, seq = line.split()
    data = {"t": time.time_ns() // 1000, "p": int(point), "s": int(seq), "pad": PAD}
    mgr.emit("msg", data, room=room)
