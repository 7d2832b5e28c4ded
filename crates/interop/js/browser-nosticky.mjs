// The demo page in headless Chromium through nginx's default site (no affinity): the
// page connects with the client's default options (polling, then upgrade), joins a
// room, and holds the session for `hold_ms` while publishes acknowledged by the page
// arrive; its requests must have reached several gateways (nginx's log).
import { chromium } from "playwright-core";
import { cfg, check, publishWithAck, runCase, sleep, upstreamsOf } from "./lib.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const outDir = process.env.INTEROP_OUT ?? ".";

await runCase("no sticky: demo page through nginx without affinity", async () => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    const problems = [];
    const sids = new Set();
    page.on("pageerror", (err) => problems.push(err.message));
    page.on("request", (req) => {
      const sid = new URL(req.url()).searchParams.get("sid");
      if (sid) sids.add(sid);
    });
    await page.goto(`${cfg.site}/#token=${cfg.tokens[cfg.users.bob]}&key=${cfg.key}`);
    await page.getByRole("button", { name: "Connect", exact: true }).click();
    await page.locator("#state[data-state=connected]").waitFor({ timeout: 10000 });
    const room = `room:nosticky-browser-${cfg.users.bob}`;
    await page.getByLabel("Room to join", { exact: true }).fill(room);
    await page.getByRole("button", { name: "Join", exact: true }).click();
    await page.locator(`#rooms li[data-room="${room}"]`).waitFor();

    const until = Date.now() + cfg.hold_ms;
    let rounds = 0;
    while (Date.now() < until) {
      const acks = await publishWithAck(cfg.site, room, "nosticky", { n: rounds });
      check(acks.length === 1 && acks[0].data?.by === "demo page", `acks ${JSON.stringify(acks)}`);
      await page.locator("#log li", { hasText: `"n":${rounds}` }).first().waitFor({ timeout: 5000 });
      check(
        (await page.locator("#state").getAttribute("data-state")) === "connected",
        `page not connected after ${rounds} rounds`,
      );
      rounds += 1;
      await sleep(5000);
    }
    check(sids.size === 1, `the page used ${sids.size} sessions: ${[...sids]}`);
    const [sid] = sids;
    const nodes = upstreamsOf(sid);
    check(nodes.length >= 2, `its requests reached ${nodes.length} gateway(s)`);
    const transport = await page.locator("#transport").textContent();
    await page.screenshot({ path: `${outDir}/browser-nosticky.png`, fullPage: true });
    check(problems.length === 0, `page errors: ${problems.join("; ")}`);
    return `${rounds} publish+ack rounds in ${cfg.hold_ms / 1000} s over ${transport}; requests served by ${nodes.length} gateways`;
  } finally {
    await browser.close();
  }
});
process.exit(0);
