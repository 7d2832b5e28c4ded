// Shared by the interop scripts: the harness's configuration, case reporting, and the
// HTTP calls (publish, node restart) every case makes.

import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

/** The harness passes everything in one JSON environment variable. */
export const cfg = JSON.parse(process.env.INTEROP ?? "{}");

/** How long any single wait lasts before the case fails. */
export const WAIT_MS = 5000;

/** Runs `body` as case `name` and prints one JSON result line. Never throws. */
export async function runCase(name, body) {
  const started = Date.now();
  let ok = false;
  let detail = "";
  try {
    detail = (await body()) ?? "";
    ok = true;
  } catch (err) {
    detail = err?.message ?? String(err);
  }
  console.log(JSON.stringify({ case: name, ok, detail, ms: Date.now() - started }));
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

export function withTimeout(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** POST /v1/publish on node `i`, in the suite users' tenant; returns { status, body }. */
export async function publish(i, body) {
  const res = await fetch(`${cfg.nodes[i]}/v1/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.key}` },
    body: JSON.stringify({ tenant: cfg.tenant, ...body }),
  });
  return { status: res.status, body: await res.json() };
}

/** Publishes and insists the node accepted it. */
export async function accepted(i, body) {
  const { status, body: answer } = await publish(i, body);
  check(status === 202, `publish answered ${status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** Asks the harness to stop node `i` and start it again on the same port. */
export async function restartNode(i) {
  const res = await fetch(`${cfg.control}/restart/${i}`, { method: "POST" });
  check(res.ok, `restart of node ${i} failed: ${await res.text()}`);
}

/** Records every event a socket receives, in order. */
export class Recorder {
  constructor(socket) {
    this.events = [];
    this.wake = () => {};
    socket.onAny((event, ...args) => {
      this.events.push({ event, args });
      this.wake();
    });
  }

  /** The next event called `name`, and the events received before it. */
  async expect(name) {
    return withTimeout(
      new Promise((resolve) => {
        const look = () => {
          const at = this.events.findIndex((e) => e.event === name);
          if (at < 0) return false;
          this.wake = () => {};
          const before = this.events.splice(0, at + 1);
          resolve({ args: before.pop().args, before });
          return true;
        };
        if (!look()) this.wake = look;
      }),
      `event "${name}"`,
    );
  }
}

/**
 * Connects to `url` with `token` and waits for the gateway's `connected` event; rejects
 * with the connect_error. The socket goes into `opened` (closed at the end).
 */
export async function openAt(url, token, options, opened) {
  const socket = io(url, {
    path: cfg.path,
    auth: { token },
    reconnection: false,
    forceNew: true,
    ...options,
  });
  opened.push(socket);
  const rec = new Recorder(socket);
  const connected = await withTimeout(
    new Promise((resolve, reject) => {
      socket.once("connected", resolve);
      socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
    }),
    `"connected" from ${url}`,
  );
  return { socket, rec, connected };
}

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The gateways nginx sent the requests of Engine.IO session `sid` to, from the access
 * log the harness adds (`$arg_sid|$upstream_addr|…` per request; nginx lists every
 * upstream it tried, comma-separated).
 */
export function upstreamsOf(sid) {
  const seen = new Set();
  for (const line of readFileSync(cfg.upstream_log, "utf8").split("\n")) {
    const [logged, upstreams] = line.split("|");
    if (logged !== sid || !upstreams) continue;
    for (const addr of upstreams.split(",")) seen.add(addr.trim());
  }
  return [...seen].filter((a) => cfg.gateways.includes(a)).sort();
}

/** POSTs a publish with `ack_timeout_ms` through `base`; returns the acks. */
export async function publishWithAck(base, room, event, data) {
  const res = await fetch(`${base}/v1/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${cfg.key}` },
    body: JSON.stringify({ tenant: cfg.tenant, event, to: [room], data, ack_timeout_ms: 5000 }),
  });
  const body = await res.json();
  check(res.status === 200, `publish with ack through ${base}: ${res.status} ${JSON.stringify(body)}`);
  return body.acks;
}
