// A socket.io-client (the official JS client) driven over stdin/stdout, for test suites
// written in other languages (the Python SDK's). Configuration in the LISTEN environment
// variable: {"url", "namespace", "token", "rooms": [...], "ack": <value to answer acks>}.
// Prints one JSON line per thing that happens: {"ready": sid} once connected and joined,
// {"event", "args"} for every event, {"disconnect": reason}, {"acked": id, "args"} for
// the answers to its own emits. Reads one JSON command per line: {"emit", "args", "id"}
// (an "id" asks for the ack), or {"leave": room}. Exits when stdin closes.

import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const cfg = JSON.parse(process.env.LISTEN ?? "{}");
const say = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);

const socket = io(`${cfg.url}${cfg.namespace ?? "/"}`, {
  auth: { token: cfg.token },
  transports: ["websocket"],
  reconnection: false,
});
socket.onAny((event, ...args) => {
  const last = args[args.length - 1];
  if (typeof last === "function") {
    last(cfg.ack ?? null);
    args = args.slice(0, -1);
  }
  say({ event, args });
});
socket.on("disconnect", (reason) => say({ disconnect: reason }));
socket.on("connect_error", (err) => say({ connect_error: err.message }));
socket.on("connect", async () => {
  for (const room of cfg.rooms ?? []) {
    const answer = await socket.emitWithAck("join", room);
    if (!answer?.ok) say({ join_refused: room, answer });
  }
  say({ ready: socket.id });
});

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const cmd = JSON.parse(line);
  if (cmd.emit && cmd.id !== undefined) {
    const args = await socket.timeout(5000).emitWithAck(cmd.emit, ...(cmd.args ?? [])).catch((e) => [String(e)]);
    say({ acked: cmd.id, args: Array.isArray(args) ? args : [args] });
  } else if (cmd.emit) {
    socket.emit(cmd.emit, ...(cmd.args ?? []));
  } else if (cmd.leave) {
    say({ left: cmd.leave, answer: await socket.emitWithAck("leave", cmd.leave) });
  }
});
lines.on("close", () => {
  socket.close();
  process.exit(0);
});
