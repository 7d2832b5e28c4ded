// Compat cases (docs/migration.md): publishers and servers teams run today, unchanged,
// reaching Roomcast's clients through the Redis the 3 nodes use — python-socketio
// (current, and 5.13 which pickles), its AsyncRedisManager, Flask-SocketIO, Node's
// @socket.io/redis-emitter and a real Socket.IO 4 server with @socket.io/redis-adapter —
// and, the other way, a Roomcast publish reaching that Node server's client.
//
// The nodes run with COMPAT_SOURCES=python,node, COMPAT_NODE_OUTBOUND=true and
// COMPAT_TENANT = this suite's tenant. Every case also checks that a client of another
// tenant, in a room of the same name on another node, received nothing (proven by a
// marker published to it afterwards, never by waiting).

import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { Emitter } from "@socket.io/redis-emitter";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";
import { io as connectNode } from "socket.io-client";
import { accepted, cfg, check, openAt, runCase, withTimeout } from "./lib.mjs";

const opened = [];
const ROOM = "room:compat";
const LOBBY = "lobby"; // not kind:id: Roomcast's `room:lobby`
const nodeUrl = (i) => cfg.nodes[i];
const token = (c, user) => c.tokens[c.users[user]];
const other = cfg.other;

async function joined(i, c, user, rooms) {
  const client = await openAt(nodeUrl(i), token(c, user), {}, opened);
  for (const room of rooms) {
    const ack = await withTimeout(client.socket.timeout(5000).emitWithAck("join", room), `join ${room}`);
    check(ack?.ok === true, `join ${room}: ${JSON.stringify(ack)}`);
  }
  return client;
}

// The compat tenant's client on node 1; another tenant's, same rooms, on node 2.
const mine = await joined(1, cfg, "alice", [ROOM, `room:${LOBBY}`]);
const theirs = await joined(2, other, "alice", [ROOM, `room:${LOBBY}`]);

/** Proves `theirs` got none of `events`: a marker to it, then a look at what came first. */
let markers = 0;
async function nothingElsewhere(events) {
  const name = `marker-${(markers += 1)}`;
  await fetch(`${nodeUrl(0)}/v1/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.key}` },
    body: JSON.stringify({ tenant: other.tenant, event: name, to: [ROOM], data: 1 }),
  });
  const { before } = await theirs.rec.expect(name);
  const leaked = before.filter((e) => events.includes(e.event));
  check(leaked.length === 0, `another tenant received ${JSON.stringify(leaked)}`);
}

function python(interpreter, mode, tag) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, INTEROP: JSON.stringify({ redis: cfg.redis, room: ROOM, tag }) };
    const child = spawn(interpreter, ["compat_publish.py", mode], { cwd: cfg.python_dir, env });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("exit", (code) =>
      code === 0 ? resolve(JSON.parse(out.trim().split("\n").pop())) : reject(new Error(`${mode}: exit ${code}: ${err.trim()}`)),
    );
  });
}

/** The next `name` event on `client` with this tag (earlier ones of other cases skipped). */
async function received(client, name, tag) {
  for (;;) {
    const { args } = await client.rec.expect(name);
    if (args[0]?.tag === tag) return args[0];
  }
}

for (const [label, interpreter] of [
  ["python-socketio (current)", cfg.python],
  ["python-socketio 5.13 (pickle)", cfg.python_513],
]) {
  for (const mode of ["sync", "async"]) {
    const manager = mode === "sync" ? "RedisManager" : "AsyncRedisManager";
    await runCase(`${label} ${manager}(write_only).emit: a room, the namespace`, async () => {
      const tag = `${mode}-${interpreter.length}-${Date.now()}`;
      const ran = await python(interpreter, mode, tag);
      const toRoom = await received(mine, "py-room", tag);
      const toAll = await received(mine, "py-all", tag);
      check(toRoom.kind === mode && toAll.kind === mode, JSON.stringify({ toRoom, toAll }));
      await nothingElsewhere(["py-room", "py-all"]);
      return `python-socketio ${ran.version}: room and namespace emits received on ${mine.connected.node_id}; nothing in another tenant`;
    });
  }
}

await runCase("Flask-SocketIO SocketIO(message_queue=url).emit outside a request", async () => {
  const tag = `flask-${Date.now()}`;
  await python(cfg.python, "flask", tag);
  const got = await received(mine, "py-room", tag);
  check(got.kind === "flask", JSON.stringify(got));
  await nothingElsewhere(["py-room"]);
  return `received on ${mine.connected.node_id}`;
});

const pub = createClient({ url: cfg.redis });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

await runCase("@socket.io/redis-emitter emitter.to(room).emit with a binary argument", async () => {
  const tag = `emitter-${Date.now()}`;
  new Emitter(pub).to(ROOM).emit("node-emit", { tag, raw: Buffer.from([0, 1, 2, 255]) }, "second");
  const { args } = await mine.rec.expect("node-emit");
  check(args[0].tag === tag && args[1] === "second", JSON.stringify(args));
  const raw = args[0].raw;
  check(Buffer.isBuffer(raw) && Buffer.compare(raw, Buffer.from([0, 1, 2, 255])) === 0, `binary arrived as ${JSON.stringify(raw)}`);
  await nothingElsewhere(["node-emit"]);
  return "2 arguments, the binary one byte for byte";
});

// A real Socket.IO 4 server on the same Redis, as the old servers of a mixed cluster.
const http = createServer();
const nodeIo = new Server(http, { adapter: createAdapter(pub, sub) });
nodeIo.on("connection", (s) => s.join(s.handshake.auth.room));
await new Promise((r) => http.listen(0, "127.0.0.1", r));
const oldUrl = `http://127.0.0.1:${http.address().port}`;

await runCase("Socket.IO 4 + @socket.io/redis-adapter: io.to(room).emit reaches Roomcast's clients", async () => {
  const tag = `adapter-${Date.now()}`;
  nodeIo.to(LOBBY).emit("old-server", { tag });
  const got = await received(mine, "old-server", tag);
  check(got.tag === tag, JSON.stringify(got));
  await nothingElsewhere(["old-server"]);
  return `"${LOBBY}" on the Node server is room:${LOBBY} here; received on ${mine.connected.node_id}`;
});

await runCase("mixed cluster: a Roomcast HTTP publish reaches the Node server's client, once each", async () => {
  const old = connectNode(oldUrl, { auth: { room: LOBBY }, reconnection: false, forceNew: true });
  opened.push(old);
  await withTimeout(new Promise((r) => old.once("connect", r)), "the Node server's connect");
  const got = new Promise((resolve) => old.on("from-roomcast", resolve));
  const tag = `outbound-${Date.now()}`;
  await accepted(0, { event: "from-roomcast", to: [`room:${LOBBY}`], data: { tag } });
  const onOld = await withTimeout(got, "the publish on the Node server's client");
  check(onOld.tag === tag, JSON.stringify(onOld));
  // Roomcast's own client gets it once: the outbound copy is not delivered again.
  await received(mine, "from-roomcast", tag);
  await accepted(0, { event: "after-outbound", to: [`room:${LOBBY}`], data: 1 });
  const { before } = await mine.rec.expect("after-outbound");
  check(!before.some((e) => e.event === "from-roomcast"), "delivered twice to Roomcast's client");
  await nothingElsewhere(["from-roomcast"]);
  return `published on node 0; received by the Node server's client and once by Roomcast's`;
});

await runCase("malformed pickle, a pickle naming a function, MessagePack garbage: counted, the rest delivered", async () => {
  const count = async (source, result) => {
    let total = 0;
    for (const url of cfg.nodes) {
      const text = await (await fetch(`${url}/metrics`)).text();
      const line = text
        .split("\n")
        .find((l) => l.startsWith("roomcast_compat_messages_total{") && l.includes(`source="${source}"`) && l.includes(`result="${result}"`));
      total += line ? Number(line.split(" ").pop()) : 0;
    }
    return total;
  };
  const before = [await count("python", "malformed"), await count("python", "unsafe"), await count("node", "malformed")];
  const tag = `bad-${Date.now()}`;
  await python(cfg.python, "bad", tag);
  const got = await received(mine, "py-room", tag);
  check(got.kind === "after-bad", JSON.stringify(got));
  const after = [await count("python", "malformed"), await count("python", "unsafe"), await count("node", "malformed")];
  const n = cfg.nodes.length;
  check(
    after[0] - before[0] === n && after[1] - before[1] === n && after[2] - before[2] === n,
    `counted (malformed, unsafe, node malformed) ${before} -> ${after}, expected +${n} each`,
  );
  check(!mine.rec.events.some((e) => e.event === "py-evil"), "the pickle naming a function was delivered");
  return `each of ${n} nodes counted 1 malformed pickle, 1 unsafe pickle, 1 MessagePack garbage; the next message arrived`;
});

for (const s of opened) s.close();
nodeIo.close();
await Promise.allSettled([pub.quit(), sub.quit()]);
process.exit(0);
