// Roomcast demo page: the official socket.io-client against the node serving this page.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_LOG = 200;
let config = { path: "/socket.io/", namespaces: ["/"] };
let socket = null;
const rooms = new Set();

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text ?? state;
  const live = state === "connected";
  $("join").disabled = !live;
  $("disconnect").disabled = socket === null;
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of [...rooms].sort()) {
    const li = document.createElement("li");
    li.dataset.room = room;
    const name = document.createElement("span");
    name.textContent = room;
    const leave = document.createElement("button");
    leave.type = "button";
    leave.textContent = "Leave";
    leave.setAttribute("aria-label", `Leave ${room}`);
    leave.addEventListener("click", () => leaveRoom(room));
    li.append(name, leave);
    list.append(li);
  }
}

function describe(value) {
  if (value instanceof ArrayBuffer) return `<binary ${value.byteLength} bytes>`;
  if (ArrayBuffer.isView(value)) return `<binary ${value.byteLength} bytes>`;
  try {
    return JSON.stringify(value, (_, v) =>
      v instanceof ArrayBuffer || ArrayBuffer.isView(v) ? `<binary ${v.byteLength} bytes>` : v);
  } catch {
    return String(value);
  }
}

function log(event, args) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  const now = new Date();
  time.dateTime = now.toISOString();
  time.textContent = now.toLocaleTimeString();
  const name = document.createElement("span");
  name.className = "event";
  name.textContent = event;
  const body = document.createElement("code");
  body.textContent = args.map(describe).join(", ");
  li.append(time, name, body);
  const list = $("log");
  list.prepend(li);
  while (list.children.length > MAX_LOG) list.lastElementChild.remove();
}

function result(id, ok, text) {
  const el = $(id);
  el.className = `result ${ok ? "ok" : "bad"}`;
  el.textContent = text;
}

function connect(token, ns) {
  if (socket) socket.disconnect();
  rooms.clear();
  renderRooms();
  const url = ns === "/" ? location.origin : location.origin + ns;
  socket = io(url, { path: config.path, auth: { token }, reconnectionDelayMax: 3000 });
  setState("connecting");

  socket.on("connect", () => {
    setState("connected");
    $("transport").textContent = socket.io.engine.transport.name;
    socket.io.engine.once("upgrade", (t) => { $("transport").textContent = t.name; });
  });
  socket.on("connected", (info) => {
    // Publishes from this page address the connected user's tenant.
    tenant = info.tenant_id ?? null;
    $("node-id").textContent = info.node_id ?? "–";
    $("user-id").textContent = info.user_id ?? "–";
    for (const room of info.rooms ?? []) rooms.add(room);
    renderRooms();
  });
  socket.on("connect_error", (err) => {
    setState("error", `error: ${err.message}`);
    log("connect_error", [err.message]);
  });
  socket.on("disconnect", (reason) => {
    setState("disconnected", `disconnected (${reason})`);
    $("transport").textContent = "–";
    rooms.clear();
    renderRooms();
  });
  // Every event lands in the log; a server that asks for an acknowledgement gets one.
  socket.onAny((event, ...args) => {
    const last = args.at(-1);
    if (typeof last === "function") {
      args.pop();
      last({ received: true, by: "demo page" });
    }
    log(event, args);
  });
}

async function joinRoom(room) {
  try {
    const ack = await socket.timeout(5000).emitWithAck("join", room);
    if (ack.ok) {
      rooms.add(ack.room);
      renderRooms();
      result("join-result", true, `joined ${ack.room}${ack.warning ? ` (${ack.warning})` : ""}`);
    } else {
      result("join-result", false, ack.error);
    }
  } catch (err) {
    result("join-result", false, `no answer: ${err.message}`);
  }
}

async function leaveRoom(room) {
  try {
    const ack = await socket.timeout(5000).emitWithAck("leave", room);
    if (ack.ok) rooms.delete(room);
    renderRooms();
    result("join-result", ack.ok, ack.ok ? `left ${room}` : ack.error);
  } catch (err) {
    result("join-result", false, `no answer: ${err.message}`);
  }
}

/** The tenant of the connected user, named in every publish. */
let tenant = null;

async function publish(form) {
  let data;
  try {
    data = form.data.value.trim() === "" ? null : JSON.parse(form.data.value);
  } catch (err) {
    result("publish-result", false, `data is not JSON: ${err.message}`);
    return;
  }
  const ns = $("namespace").value;
  const body = { event: form.event.value, to: [form.room.value], data, ns };
  if (tenant) body.tenant = tenant;
  try {
    const res = await fetch("v1/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${form.key.value}` },
      body: JSON.stringify(body),
    });
    const answer = await res.json().catch(() => ({}));
    if (res.ok) {
      result("publish-result", true, `accepted (HTTP ${res.status}), id ${answer.id}`);
    } else {
      result("publish-result", false, `HTTP ${res.status}: ${answer.error ?? res.statusText}`);
    }
  } catch (err) {
    result("publish-result", false, `request failed: ${err.message}`);
  }
}

async function init() {
  try {
    const res = await fetch("demo/config.json");
    config = { ...config, ...(await res.json()) };
  } catch (err) {
    log("page", [`could not load demo/config.json: ${err.message}`]);
  }
  $("page-node").textContent = config.node_id ?? "?";
  const select = $("namespace");
  for (const ns of config.namespaces) select.add(new Option(ns, ns));
  // A link may carry credentials in its fragment (`/#token=...&key=...`), which never
  // reaches any server; `cargo xtask cluster` prints such links.
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token") ?? config.token;
  const key = fragment.get("key") ?? config.publish_key;
  if (token) $("token").value = token;
  if (key) $("publish-key").value = key;

  $("connect-form").addEventListener("submit", (e) => {
    e.preventDefault();
    connect($("token").value.trim(), select.value);
  });
  $("disconnect").addEventListener("click", () => {
    socket?.disconnect();
    socket = null;
    setState("disconnected");
  });
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    joinRoom($("join-room").value.trim());
  });
  $("publish-form").addEventListener("submit", (e) => {
    e.preventDefault();
    publish(e.target);
  });
  $("clear-log").addEventListener("click", () => $("log").replaceChildren());
  setState("disconnected");
}

init();
