// The Compose stack (deploy/compose) seen by the official socket.io-client: connect
// through nginx over WebSocket, receive an event published through nginx. Run by the
// e2e matrix with COMPOSE_URL, COMPOSE_TOKEN and COMPOSE_KEY; prints one line.
import { io } from "socket.io-client";
import { withTimeout } from "./lib.mjs";

const url = process.env.COMPOSE_URL;
const socket = io(url, {
  auth: { token: process.env.COMPOSE_TOKEN },
  transports: ["websocket"],
  reconnection: false,
});
const connected = await withTimeout(
  new Promise((resolve, reject) => {
    socket.once("connected", resolve);
    socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
  }),
  "connected through nginx",
);
const received = withTimeout(
  new Promise((resolve) => socket.once("compose-hello", resolve)),
  "the published event",
);
const res = await fetch(`${url}/v1/publish`, {
  method: "POST",
  headers: { "Content-Type": "application/json", Authorization: `Bearer ${process.env.COMPOSE_KEY}` },
  body: JSON.stringify({ tenant: "acme", event: "compose-hello", to: ["user:compose-user"], data: { hi: 1 } }),
});
if (res.status !== 202) throw new Error(`publish answered ${res.status}: ${await res.text()}`);
const data = await received;
if (data?.hi !== 1) throw new Error(`got ${JSON.stringify(data)}`);
console.log(`JS client on ${connected.node_id} via nginx received the publish`);
socket.disconnect();
