// The official Socket.IO Admin UI (npm's @socket.io/admin-ui, its static build served by
// node 0 at /admin/ui/) in headless Chromium, against the 3-node cluster: wrong
// credentials are refused; with the right ones it shows the 3 servers and each
// official client's socket with its rooms; disconnecting a socket from the UI
// disconnects it. Saves screenshots.
import { chromium } from "playwright-core";
import { io } from "socket.io-client";
import { cfg, check, runCase, withTimeout } from "./lib.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const outDir = process.env.INTEROP_OUT ?? ".";
const admin = cfg.admin;
const room = `doc:Admin:${Date.now()}`;

/** One official client per node, in `room`. */
async function clients() {
  const made = [];
  for (let i = 0; i < 3; i++) {
    const socket = io(cfg.nodes[i], {
      auth: { token: cfg.tokens[cfg.users.alice] },
      transports: ["websocket"],
      reconnection: false,
    });
    await withTimeout(new Promise((ok, fail) => {
      socket.once("connect", ok);
      socket.once("connect_error", fail);
    }), `client on node ${i}`);
    const answer = await socket.emitWithAck("join", room);
    check(answer?.ok, `join refused: ${JSON.stringify(answer)}`);
    made.push(socket);
  }
  return made;
}

let browser;
let page;
let sockets = [];
const problems = [];

await runCase("admin UI: wrong credentials are refused", async () => {
  sockets = await clients();
  browser = await chromium.launch({
    executablePath,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking"],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  // Where the UI connects: this node, WebSocket only (what the connection form saves).
  await context.addInitScript((url) => {
    localStorage.setItem("server_url", url);
    localStorage.setItem("ws_only", "true");
  }, cfg.nodes[0]);
  page = await context.newPage();
  page.on("pageerror", (err) => problems.push(err.message));
  await page.goto(`${cfg.nodes[0]}/admin/ui/`);
  await page.getByLabel("Username").fill(admin.username);
  await page.getByLabel("Password").fill("not-the-password");
  await page.getByRole("button", { name: "Connect" }).click();
  await page.getByText("Invalid credentials").waitFor({ timeout: 10000 });
  return "the UI says: Invalid credentials";
});

await runCase("admin UI: 3 servers, every socket with its rooms", async () => {
  check(page, "the UI did not load");
  await page.getByLabel("Password").fill(admin.password);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.getByLabel("Password").waitFor({ state: "hidden", timeout: 10000 });
  await page.goto(`${cfg.nodes[0]}/admin/ui/#/servers/`);
  for (const id of cfg.node_ids) {
    await page.getByText(id, { exact: true }).first().waitFor({ timeout: 10000 });
  }
  await page.screenshot({ path: `${outDir}/admin-ui-servers.png`, fullPage: true });
  await page.goto(`${cfg.nodes[0]}/admin/ui/#/sockets/`);
  for (const s of sockets) {
    await page.getByText(s.id, { exact: true }).first().waitFor({ timeout: 10000 });
  }
  await page.screenshot({ path: `${outDir}/admin-ui-sockets.png`, fullPage: true });
  await page.goto(`${cfg.nodes[0]}/admin/ui/#/rooms/`);
  const scoped = `@${cfg.tenant}/${room}`;
  await page.getByText(scoped, { exact: true }).first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${outDir}/admin-ui-rooms.png`, fullPage: true });
  return `3 servers, ${sockets.length} sockets in ${scoped}; screenshots in ${outDir}`;
});

await runCase("admin UI: disconnecting a socket disconnects it", async () => {
  check(page, "the UI did not load");
  const target = sockets[2];
  const gone = new Promise((ok) => target.once("disconnect", ok));
  await page.goto(`${cfg.nodes[0]}/admin/ui/#/n/${encodeURIComponent("/")}/sockets/${target.id}`);
  await page.getByText(target.id).first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${outDir}/admin-ui-socket.png`, fullPage: true });
  // The button of the "Status" row (an icon button: its icon font comes from a CDN).
  await page.locator("tr", { hasText: "Status" }).locator("button").last().click({ timeout: 5000 });
  const reason = await withTimeout(gone, "the socket's disconnect", 10000);
  await page.screenshot({ path: `${outDir}/admin-ui-disconnected.png`, fullPage: true });
  check(problems.length === 0, `page errors: ${problems.join("; ")}`);
  return `the client saw: ${reason}`;
});

for (const s of sockets) s.close();
await browser?.close();
