// The shipped nginx configurations (deploy/nginx) in front of three Roomcast nodes, and a
// node with native TLS, driven by the official socket.io-client. One JSON line per case.
// The harness passes the site URLs, the native TLS node, and the CA files; the test CA is
// trusted through NODE_EXTRA_CA_CERTS, as a company CA installed on the machine would be.
import { readFileSync } from "node:fs";
import { cfg, check, openAt, runCase } from "./lib.mjs";

const token = cfg.tokens[cfg.users.alice];
const sites = cfg.sites;
const opened = [];

/** Connects through `url` and waits for `connected`; rejects with the connect_error. */
async function open(url, options = {}) {
  return openAt(url, token, options, opened);
}

/** Publishes through `base` (nginx lets loopback reach /v1/); insists on 202. */
async function publish(base, room, event, data) {
  const res = await fetch(`${base}/v1/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.key}` },
    body: JSON.stringify({ tenant: cfg.tenant, event, to: [room], data }),
  });
  check(res.status === 202, `publish through ${base}: ${res.status} ${await res.text()}`);
}

/** `count` clients through `url` join `room`; `events` publishes reach each, in order. */
async function roomThrough(url, room, count, events, options) {
  const clients = [];
  for (let i = 0; i < count; i++) clients.push(await open(url, options));
  for (const c of clients) {
    const ack = await c.socket.timeout(5000).emitWithAck("join", room);
    check(ack.ok === true, `join: ${JSON.stringify(ack)}`);
  }
  for (let n = 0; n < events; n++) await publish(sites.roomcast, room, "through-nginx", n);
  for (const c of clients) {
    for (let n = 0; n < events; n++) {
      const { args } = await c.rec.expect("through-nginx");
      check(args[0] === n, `expected ${n}, got ${JSON.stringify(args)}`);
    }
  }
  const transports = new Set(clients.map((c) => c.socket.io.engine.transport.name));
  const nodes = [...new Set(clients.map((c) => c.connected.node_id))].sort();
  clients.forEach((c) => c.socket.disconnect());
  return { nodes, transports: [...transports] };
}

await runCase("roomcast.conf: WebSocket clients, no stickiness", async () => {
  const { nodes } = await roomThrough(sites.roomcast, "room:ngx-ws", 6, 3, {
    transports: ["websocket"],
  });
  check(nodes.length >= 2, `all 6 clients landed on ${nodes}: the balancer did not spread them`);
  return `6 clients spread over ${nodes.join(", ")}; 3 events each, in order`;
});

await runCase("sticky-ip-hash.conf: long-polling clients", async () => {
  const { nodes, transports } = await roomThrough(sites["sticky-ip-hash"], "room:ngx-ip", 3, 5, {
    transports: ["polling"],
    upgrade: false,
  });
  check(transports.join() === "polling", `transports ${transports}`);
  return `3 polling clients on ${nodes.join(", ")} (one client address); 5 events each`;
});

await runCase("sticky-cookie.conf: long-polling clients, then upgrade", async () => {
  const polling = await roomThrough(sites["sticky-cookie"], "room:ngx-cookie", 6, 5, {
    transports: ["polling"],
    upgrade: false,
    withCredentials: true,
  });
  // The client default: polling first, then the upgrade, which must reach the same node.
  const upgrading = await roomThrough(sites["sticky-cookie"], "room:ngx-cookie-up", 3, 2, {
    withCredentials: true,
  });
  return `6 polling clients over ${polling.nodes.join(", ")}; 3 default clients (${upgrading.transports}) over ${upgrading.nodes.join(", ")}`;
});

await runCase("roomcast.conf: long-polling clients, no stickiness", async () => {
  const polling = await roomThrough(sites.roomcast, "room:ngx-rr-poll", 6, 5, {
    transports: ["polling"],
    upgrade: false,
  });
  check(polling.transports.join() === "polling", `transports ${polling.transports}`);
  const upgrading = await roomThrough(sites.roomcast, "room:ngx-rr-up", 3, 2, {});
  return `6 polling clients held by ${polling.nodes.join(", ")}; 3 default clients (${upgrading.transports}) held by ${upgrading.nodes.join(", ")}`;
});

await runCase("roomcast-tls.conf: wss:// through nginx", async () => {
  const { nodes } = await roomThrough(sites["roomcast-tls"], "room:ngx-wss", 3, 2, {
    transports: ["websocket"],
  });
  return `3 wss:// clients on ${nodes.join(", ")}, certificate from the test CA`;
});

await runCase("native TLS: wss:// straight to a node", async () => {
  const c = await open(cfg.native_tls, { transports: ["websocket"] });
  const ack = await c.socket.timeout(5000).emitWithAck("join", "room:ngx-native");
  check(ack.ok === true, `join: ${JSON.stringify(ack)}`);
  // Published on a plain-HTTP node: the event crosses the cluster to the TLS node.
  await publish(sites.roomcast, "room:ngx-native", "through-nginx", "native");
  const { args } = await c.rec.expect("through-nginx");
  check(args[0] === "native", JSON.stringify(args));
  c.socket.disconnect();
  return `connected to ${c.connected.node_id} over wss://, event from another node received`;
});

await runCase("native TLS: a client trusting another CA is refused", async () => {
  try {
    await open(cfg.native_tls, {
      transports: ["websocket"],
      ca: readFileSync(cfg.other_ca_file),
    });
  } catch (err) {
    check(/connect_error/.test(err.message), err.message);
    return `refused by the client's TLS check: ${err.message}`;
  }
  throw new Error("connected although the client trusts another CA");
});

opened.forEach((s) => s.disconnect());
