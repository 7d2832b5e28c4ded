// Connects to a gateway with the official socket.io-client using the dev token the
// gateway printed, waits for `connected`, runs the printed curl command, and waits for
// the event it publishes. Prints one JSON line with what it saw; exits non-zero on failure.
//
// Environment: GATEWAY_URL, TOKEN, CURL (shell command), TRANSPORT (websocket | polling).
import { io } from "socket.io-client";
import { execSync } from "node:child_process";

const { GATEWAY_URL, TOKEN, CURL, TRANSPORT } = process.env;
const fail = (why) => {
  console.error(`FAIL (${TRANSPORT}): ${why}`);
  process.exit(1);
};
const timer = setTimeout(() => fail("timed out after 15 s"), 15000);

const socket = io(GATEWAY_URL, {
  transports: [TRANSPORT],
  upgrade: false,
  reconnection: false,
  auth: { token: TOKEN },
});
const seen = { transport: TRANSPORT };
socket.on("connect_error", (err) => fail(`connect_error: ${err.message}`));
socket.on("connected", (info) => {
  seen.connected = info;
  seen.engine_transport = socket.io.engine.transport.name;
  const out = execSync(CURL, { shell: "/bin/sh", encoding: "utf8" });
  seen.curl_response = JSON.parse(out);
});
socket.on("hello", (data) => {
  seen.hello = data;
  clearTimeout(timer);
  console.log(JSON.stringify(seen));
  socket.close();
  process.exit(0);
});
