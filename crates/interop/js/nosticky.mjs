// No sticky sessions: the official client through nginx's default site (no affinity),
// polling only and with default options (polling, then the upgrade). Each client holds
// its session for `hold_ms`, with publishes acknowledged by the client and client emits
// acknowledged by the server along the way, and its requests must have reached several
// gateways (nginx's log, by session id). With INTEROP_MODE=kill: a node is killed under
// polling clients, which reconnect and receive again.
import { cfg, check, openAt, publishWithAck, runCase, sleep, upstreamsOf, withTimeout } from "./lib.mjs";

const token = cfg.tokens[cfg.users.alice];
const opened = [];
const ROUND_MS = 5000;

/** One client through the site for the hold; returns its case detail. */
async function hold(label, options, minNodes) {
  const c = await openAt(cfg.site, token, options, opened);
  let dropped = null;
  c.socket.on("disconnect", (why) => {
    dropped = why;
  });
  c.socket.on("nosticky", (data, ack) => ack?.({ seen: data.n, by: label }));
  const room = `room:nosticky-${label}`;
  const joined = await c.socket.timeout(5000).emitWithAck("join", room);
  check(joined.ok === true, `join: ${JSON.stringify(joined)}`);
  const sid = c.socket.io.engine.id;
  const until = Date.now() + cfg.hold_ms;
  let rounds = 0;
  const slowest = { ms: 0, step: "" };
  const timed = async (step, promise) => {
    const started = Date.now();
    const value = await promise;
    if (Date.now() - started > slowest.ms) {
      Object.assign(slowest, { ms: Date.now() - started, step: `${step}, round ${rounds}, ${c.socket.io.engine.transport.name}` });
    }
    return value;
  };
  while (Date.now() < until) {
    const acks = await timed("publish+ack", publishWithAck(cfg.site, room, "nosticky", { n: rounds }));
    check(
      acks.length === 1 && acks[0].data?.seen === rounds,
      `round ${rounds}: acks ${JSON.stringify(acks)}`,
    );
    const again = await timed("emit+ack", c.socket.timeout(5000).emitWithAck("join", room));
    check(again.ok === true, `round ${rounds}: join ack ${JSON.stringify(again)}`);
    check(dropped === null, `disconnected after ${rounds} rounds: ${dropped}`);
    rounds += 1;
    await sleep(ROUND_MS);
  }
  check(dropped === null && c.socket.connected, `disconnected: ${dropped}`);
  check(c.socket.io.engine.id === sid, "the session changed during the hold");
  const transport = c.socket.io.engine.transport.name;
  const nodes = upstreamsOf(sid);
  check(
    nodes.length >= minNodes,
    `its requests reached ${nodes.length} gateway(s) (${nodes}), expected ${minNodes}`,
  );
  c.socket.disconnect();
  return `${rounds} publish+ack rounds in ${cfg.hold_ms / 1000} s over ${transport}; requests served by ${nodes.length} gateways; session held by ${c.connected.node_id}; slowest step ${slowest.ms} ms (${slowest.step})`;
}

if (process.env.INTEROP_MODE === "kill") {
  await runCase("no sticky: a node killed mid-session; its polling clients reconnect and receive again", async () => {
    const clients = [];
    for (let i = 0; i < 6; i++) {
      clients.push(
        await openAt(cfg.site, token, {
          transports: ["polling"],
          upgrade: false,
          reconnection: true,
          reconnectionDelay: 100,
          reconnectionDelayMax: 500,
        }, opened),
      );
    }
    for (const c of clients) {
      c.socket.on("after-kill", (data, ack) => ack?.({ seen: data.n }));
      c.rec.events.length = 0;
    }
    const victim = clients[0].connected.node_id;
    const index = cfg.node_ids.indexOf(victim);
    check(index >= 0, `unknown node ${victim}`);
    const onVictim = clients.filter((c) => c.connected.node_id === victim);
    // Every client on the victim loses its session and gets a new one on a live node.
    const back = onVictim.map((c) =>
      withTimeout(
        new Promise((resolve) => c.socket.once("disconnect", () => c.socket.once("connected", resolve))),
        "a reconnect",
        30000,
      ),
    );
    const res = await fetch(`${cfg.control}/kill/${index}`, { method: "POST" });
    check(res.ok, `kill of node ${index}: ${await res.text()}`);
    await Promise.all(back);
    for (const c of clients) {
      await withTimeout(
        new Promise((resolve) => (c.socket.connected ? resolve() : c.socket.once("connect", resolve))),
        "every client connected",
        30000,
      );
    }
    const acks = await publishWithAck(cfg.site, `user:${cfg.users.alice}`, "after-kill", { n: 1 });
    check(acks.length === clients.length, `${acks.length} acks from ${clients.length} clients`);
    for (const c of clients) {
      const { args } = await c.rec.expect("after-kill");
      check(args[0]?.n === 1, JSON.stringify(args));
    }
    clients.forEach((c) => c.socket.disconnect());
    return `${onVictim.length} of 6 clients were on ${victim} (killed): reconnected, all 6 received the next publish`;
  });
} else {
  const polling = runCase("no sticky: polling only, through nginx without affinity", () =>
    hold("js-polling", { transports: ["polling"], upgrade: false }, 3),
  );
  const upgrading = runCase("no sticky: default options (polling, then upgrade), through nginx without affinity", () =>
    hold("js-default", {}, 2),
  );
  await Promise.all([polling, upgrading]);
}
opened.forEach((s) => s.disconnect());
process.exit(0);
