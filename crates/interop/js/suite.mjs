// Interop cases for the official socket.io-client (Node.js) against a running Roomcast
// cluster. One JSON line per case on stdout; the harness draws the table.
import { io } from "socket.io-client";
import { Recorder, accepted, cfg, check, openAt, publish, restartNode, runCase, withTimeout } from "./lib.mjs";

const users = cfg.users; // { alice, bob }: user ids the harness minted tokens for
const opened = [];

/** Connects to node `i` (optionally a namespace) and waits for `connected`. */
async function open(i, token, options = {}, ns = "") {
  return openAt(cfg.nodes[i] + ns, token, options, opened);
}

/** The connect_error message a connection attempt ends with. */
async function refused(i, auth, ns = "") {
  const socket = io(cfg.nodes[i] + ns, { path: cfg.path, auth, reconnection: false, forceNew: true });
  opened.push(socket);
  return withTimeout(
    new Promise((resolve, reject) => {
      socket.once("connect_error", (err) => resolve(err.message));
      socket.once("connect", () => reject(new Error("connected although it should not")));
    }),
    "connect_error",
  );
}

const tokenOf = (user) => cfg.tokens[user];
const close = (...conns) => conns.forEach((c) => c.socket.disconnect());

await runCase("websocket only", async () => {
  const c = await open(0, tokenOf(users.alice), { transports: ["websocket"] });
  check(c.socket.io.engine.transport.name === "websocket", "not on websocket");
  await accepted(1, { event: "ping-ws", to: [`user:${users.alice}`], data: 1 });
  const { args } = await c.rec.expect("ping-ws");
  check(args[0] === 1, `got ${JSON.stringify(args)}`);
  close(c);
});

await runCase("polling only", async () => {
  const c = await open(0, tokenOf(users.alice), { transports: ["polling"], upgrade: false });
  check(c.socket.io.engine.transport.name === "polling", "not on polling");
  await accepted(1, { event: "ping-poll", to: [`user:${users.alice}`], data: "p" });
  const { args } = await c.rec.expect("ping-poll");
  check(args[0] === "p", `got ${JSON.stringify(args)}`);
  check(c.socket.io.engine.transport.name === "polling", "transport changed");
  close(c);
});

await runCase("polling -> websocket upgrade", async () => {
  const socketReady = open(0, tokenOf(users.alice));
  const c = await socketReady;
  if (c.socket.io.engine.transport.name !== "websocket") {
    await withTimeout(new Promise((r) => c.socket.io.engine.once("upgrade", r)), "upgrade");
  }
  check(c.socket.io.engine.transport.name === "websocket", "did not upgrade");
  await accepted(2, { event: "after-upgrade", to: [`user:${users.alice}`], data: true });
  await c.rec.expect("after-upgrade");
  close(c);
});

await runCase("auth (good, wrong secret, expired, missing)", async () => {
  const good = await open(1, tokenOf(users.alice));
  check(good.connected.user_id === users.alice, "wrong user");
  close(good);
  const wrong = await refused(1, { token: tokenOf("wrong_secret") });
  check(/signature/.test(wrong), `wrong secret: ${wrong}`);
  const expired = await refused(1, { token: tokenOf("expired") });
  check(/expired/.test(expired), `expired: ${expired}`);
  const missing = await refused(1, {});
  check(/token/i.test(missing), `missing: ${missing}`);
  return `refusals: "${wrong}" / "${expired}" / "${missing}"`;
});

await runCase("connected event", async () => {
  const c = await open(2, tokenOf(users.alice));
  const info = c.connected;
  check(info.message === "connected", JSON.stringify(info));
  check(info.user_id === users.alice && info.tenant_id === cfg.tenant, JSON.stringify(info));
  check(info.node_id === cfg.node_ids[2], `node ${info.node_id}`);
  const rooms = [...info.rooms].sort().join(",");
  check(rooms === [`tenant:${cfg.tenant}`, `user:${users.alice}`].sort().join(","), rooms);
  close(c);
});

await runCase("join/leave with acks (client emitWithAck)", async () => {
  const c = await open(0, tokenOf(users.alice));
  const room = `doc:Task:${users.alice}`;
  const ok = await c.socket.timeout(5000).emitWithAck("join", room);
  check(ok.ok === true && ok.room === room, `join: ${JSON.stringify(ok)}`);
  const denied = await c.socket.timeout(5000).emitWithAck("join", "secret:x");
  check(denied.ok === false && /not allowed/.test(denied.error), JSON.stringify(denied));
  const invalid = await c.socket.timeout(5000).emitWithAck("join", "lobby");
  check(invalid.ok === false && typeof invalid.error === "string", JSON.stringify(invalid));
  await accepted(1, { event: "in-room", to: [room], data: 1 });
  await c.rec.expect("in-room");
  const left = await c.socket.timeout(5000).emitWithAck("leave", { room });
  check(left.ok === true, `leave: ${JSON.stringify(left)}`);
  await accepted(1, { event: "in-room", to: [room], data: 2 });
  await accepted(1, { event: "marker", to: [`user:${users.alice}`] });
  const { before } = await c.rec.expect("marker");
  check(!before.some((e) => e.event === "in-room"), "received a room event after leaving");
  close(c);
});

await runCase("cross-node delivery", async () => {
  const a = await open(0, tokenOf(users.alice));
  const b = await open(2, tokenOf(users.bob));
  const room = `room:x-${users.alice}`;
  for (const c of [a, b]) {
    const ack = await c.socket.timeout(5000).emitWithAck("join", room);
    check(ack.ok, JSON.stringify(ack));
  }
  await accepted(1, { event: "shared", to: [room], data: { n: 1 } });
  await accepted(1, { event: "for-bob", to: [`user:${users.bob}`], data: { n: 2 } });
  await accepted(1, { event: "marker", to: [room] });
  for (const c of [a, b]) {
    const { args } = await c.rec.expect("shared");
    check(args[0].n === 1, JSON.stringify(args));
  }
  const { args } = await b.rec.expect("for-bob");
  check(args[0].n === 2, JSON.stringify(args));
  const { before } = await a.rec.expect("marker");
  check(!before.some((e) => e.event === "shared" || e.event === "for-bob"), "duplicate or misrouted");
  close(a, b);
});

await runCase("presence: who is here, join and leave events", async () => {
  const a = await open(0, tokenOf(users.alice));
  const b = await open(1, tokenOf(users.bob));
  const room = `doc:Presence:${users.alice}`;
  check((await a.socket.timeout(5000).emitWithAck("join", room)).ok, "alice join");
  check((await b.socket.timeout(5000).emitWithAck("join", room)).ok, "bob join");
  const joined = await a.rec.expect("presence_join");
  check(joined.args[0].user === users.bob && joined.args[0].room === room, JSON.stringify(joined.args));
  const here = await a.socket.timeout(5000).emitWithAck("presence", room);
  check(here.ok && here.count === 2, JSON.stringify(here));
  b.socket.disconnect();
  const left = await a.rec.expect("presence_leave");
  check(left.args[0].user === users.bob && left.args[0].reason === "disconnected", JSON.stringify(left.args));
  // Presence is asked of every node; bob's is gone within a few round trips.
  let after;
  for (let i = 0; i < 50; i++) {
    after = await a.socket.timeout(5000).emitWithAck("presence", room);
    if (after.ok && after.count === 1) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check(after.ok && after.count === 1, JSON.stringify(after));
  close(a);
  return "bob's join and disconnect announced to alice across nodes; presence 2 then 1";
});

await runCase("chat: client publish across nodes", async () => {
  const a = await open(0, tokenOf(users.alice));
  const b = await open(2, tokenOf(users.bob));
  const room = `room:chat-${users.alice}`;
  for (const c of [a, b]) {
    const ack = await c.socket.timeout(5000).emitWithAck("join", room);
    check(ack.ok, JSON.stringify(ack));
  }
  const sent = await a.socket
    .timeout(5000)
    .emitWithAck("publish", { to: room, event: "send_message", data: { text: "hi" } });
  check(sent.ok === true && typeof sent.id === "string", JSON.stringify(sent));
  const { args } = await b.rec.expect("send_message");
  check(args[0].text === "hi", JSON.stringify(args));
  const denied = await a.socket
    .timeout(5000)
    .emitWithAck("publish", { to: `doc:Task:${users.alice}`, event: "x", data: 1 });
  check(denied.ok === false && /not allowed to publish/.test(denied.error), JSON.stringify(denied));
  // The sender is left out: Bob's reply is the first chat event Alice sees.
  await b.socket.timeout(5000).emitWithAck("publish", { to: room, event: "send_message", data: { text: "yo" } });
  const reply = await a.rec.expect("send_message");
  check(reply.args[0].text === "yo", JSON.stringify(reply.args));
  close(a, b);
});

await runCase("events to services: stream consumer and webhook", async () => {
  const c = await open(1, tokenOf(users.alice));
  // Through the Redis Stream: acked once appended, confirmed by the service to this socket.
  const queued = await c.socket.timeout(5000).emitWithAck("notification_read", { id: 7 });
  check(queued.ok === true && typeof queued.id === "string", JSON.stringify(queued));
  const { args } = await c.rec.expect("notification_read_confirmed");
  check(args[0].id === 7, JSON.stringify(args));
  // Through the webhook: the service's answer is the ack.
  const answer = await c.socket.timeout(5000).emitWithAck("rpc.echo", 1, "two");
  check(answer.ok === true && answer.user === users.alice, JSON.stringify(answer));
  check(JSON.stringify(answer.echo) === JSON.stringify([1, "two"]), JSON.stringify(answer));
  const unrouted = await c.socket.timeout(5000).emitWithAck("nobody_listens", 1);
  check(unrouted.ok === false && /no handler/.test(unrouted.error), JSON.stringify(unrouted));
  close(c);
});

await runCase("namespaces", async () => {
  const root = await open(0, tokenOf(users.alice));
  const ns = await open(1, tokenOf(users.alice), {}, cfg.namespace);
  check(ns.connected.user_id === users.alice, "no connected on the namespace");
  await accepted(2, { event: "ns-only", ns: cfg.namespace, to: [`user:${users.alice}`], data: 1 });
  await accepted(2, { event: "marker", to: [`user:${users.alice}`] });
  await ns.rec.expect("ns-only");
  const { before } = await root.rec.expect("marker");
  check(!before.some((e) => e.event === "ns-only"), "namespace event leaked into /");
  const unknown = await refused(0, { token: tokenOf(users.alice) }, "/nope");
  check(/namespace/i.test(unknown), `unknown namespace: ${unknown}`);
  close(root, ns);
});

for (const transport of ["websocket", "polling"]) {
  await runCase(`binary payloads over ${transport}`, async () => {
    const c = await open(2, tokenOf(users.alice), { transports: [transport] });
    const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await accepted(0, {
      event: "file",
      to: [`user:${users.alice}`],
      data: { name: "all-bytes", content: { _placeholder: true, num: 0 } },
      attachments: [bytes.toString("base64")],
    });
    const { args } = await c.rec.expect("file");
    const got = args[0].content;
    const view = Buffer.from(got instanceof ArrayBuffer ? new Uint8Array(got) : got);
    check(args[0].name === "all-bytes", JSON.stringify(args[0].name));
    check(view.equals(bytes), `got ${view.length} bytes, not the 256 sent`);
    close(c);
    return `received ${got.constructor.name} of ${view.length} bytes`;
  });
}

await runCase("server emit-with-ack", async () => {
  const a = await open(0, tokenOf(users.bob));
  const b = await open(1, tokenOf(users.bob));
  a.socket.on("confirm", (data, ack) => ack({ seen: data.n, on: "a" }));
  b.socket.on("confirm", (data, ack) => ack({ seen: data.n, on: "b" }));
  const { status, body } = await publish(2, {
    event: "confirm",
    to: [`user:${users.bob}`],
    data: { n: 7 },
    ack_timeout_ms: 3000,
  });
  check(status === 200, `status ${status}: ${JSON.stringify(body)}`);
  const answers = body.acks.map((x) => `${x.data?.on}:${x.data?.seen}`).sort().join(",");
  check(answers === "a:7,b:7", `acks ${JSON.stringify(body.acks)}`);
  close(a, b);
});

await runCase("auto-reconnect after its node stops", async () => {
  const c = await open(2, tokenOf(users.alice), {
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    transports: ["websocket"],
  });
  const dropped = withTimeout(new Promise((r) => c.socket.once("disconnect", r)), "disconnect", 15000);
  // Listening before the restart: the client may be back before the control call returns.
  const reconnected = withTimeout(new Promise((r) => c.socket.once("connected", r)), "reconnect", 20000);
  await restartNode(2);
  const reason = await dropped;
  const again = await reconnected;
  check(again.node_id === cfg.node_ids[2], `reconnected to ${again.node_id}`);
  await accepted(0, { event: "welcome-back", to: [`user:${users.alice}`], data: 1 });
  await c.rec.expect("welcome-back");
  close(c);
  return `disconnect reason "${reason}", rooms back after reconnect`;
});

await runCase("connection state recovery on another node (socket.recovered)", async () => {
  const ns = cfg.recovery_namespace;
  const socket = io(cfg.nodes[0] + ns, {
    path: cfg.path,
    auth: { token: tokenOf(users.alice) },
    reconnection: false,
    forceNew: true,
    transports: ["websocket"],
  });
  opened.push(socket);
  const rec = new Recorder(socket);
  await rec.expect("connected");
  check(socket.recovered === false, "a first connection is not recovered");
  const room = `doc:Recover:${users.alice}`;
  const joined = await socket.timeout(5000).emitWithAck("join", room);
  check(joined.ok === true, `join: ${JSON.stringify(joined)}`);
  await accepted(1, { ns, event: "r", to: [room], data: 0 });
  const first = await rec.expect("r");
  check(first.args[0] === 0 && typeof first.args[1] === "string", `offset: ${JSON.stringify(first.args)}`);

  // The connection drops; 100 events meanwhile, from every node.
  const dropped = new Promise((r) => socket.once("disconnect", r));
  socket.io.engine.close();
  await dropped;
  for (let i = 1; i <= 100; i++) await accepted(i % 3, { ns, event: "r", to: [room], data: i });

  // Back through "the load balancer" to another node: same session id and offset.
  socket.io.uri = cfg.nodes[2];
  const back = withTimeout(new Promise((r) => socket.once("connect", r)), "reconnect");
  socket.connect();
  await back;
  check(socket.recovered === true, "socket.recovered is not true");
  for (let i = 1; i <= 100; i++) {
    const { args } = await rec.expect("r");
    check(args[0] === i, `expected ${i}, got ${JSON.stringify(args)}`);
  }
  await accepted(0, { ns, event: "r", to: [room], data: 101 });
  const { args } = await rec.expect("r");
  check(args[0] === 101, `after the replay: ${JSON.stringify(args)} (a duplicate?)`);

  // Away longer than the window: a fresh session, without the room.
  const droppedAgain = new Promise((r) => socket.once("disconnect", r));
  socket.io.engine.close();
  await droppedAgain;
  await new Promise((r) => setTimeout(r, cfg.recovery_window_ms + 2000));
  await accepted(1, { ns, event: "r", to: [room], data: 102 });
  socket.io.uri = cfg.nodes[1];
  const fresh = withTimeout(new Promise((r) => socket.once("connect", r)), "reconnect after the window");
  socket.connect();
  await fresh;
  check(socket.recovered === false, "recovered after the window had passed");
  const again = await rec.expect("connected");
  check(!again.args[0].rooms.includes(room), `room restored after the window: ${JSON.stringify(again.args[0])}`);
  socket.disconnect();
  return `recovered on node-2: 100 missed events in order, then live, none twice, room restored; after ${cfg.recovery_window_ms / 1000} s away: a fresh session`;
});

for (const s of opened) s.disconnect();
process.exit(0);
