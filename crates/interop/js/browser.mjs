// The demo page in headless Chromium: two pages on two different nodes; page B
// publishes through its form, page A shows the event. Saves a screenshot of each page.
import { chromium } from "playwright-core";
import { cfg, check, runCase } from "./lib.mjs";

const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const outDir = process.env.INTEROP_OUT ?? ".";

await runCase("demo page: publish on node 1, shown on node 0", async () => {
  const browser = await chromium.launch({
    executablePath,
    args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking"],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    // Page A gets its token typed in; page B gets token and key from the link's fragment.
    const open = async (i, user, viaFragment) => {
      const page = await context.newPage();
      const problems = [];
      page.on("pageerror", (err) => problems.push(err.message));
      page.on("console", (msg) => msg.type() === "error" && problems.push(msg.text()));
      if (viaFragment) {
        await page.goto(`${cfg.nodes[i]}/#token=${cfg.tokens[user]}&key=${cfg.key}`);
      } else {
        await page.goto(`${cfg.nodes[i]}/`);
        await page.getByLabel("Token (JWT)", { exact: true }).fill(cfg.tokens[user]);
      }
      await page.getByRole("button", { name: "Connect", exact: true }).click();
      await page.locator("#state[data-state=connected]").waitFor({ timeout: 10000 });
      await page.locator("#node-id", { hasText: cfg.node_ids[i] }).waitFor();
      return { page, problems };
    };
    const a = await open(0, cfg.users.alice, false);
    const b = await open(1, cfg.users.bob, true);

    const room = `room:browser-${cfg.users.alice}`;
    await a.page.getByLabel("Room to join", { exact: true }).fill(room);
    await a.page.getByRole("button", { name: "Join", exact: true }).click();
    await a.page.locator(`#rooms li[data-room="${room}"]`).waitFor();

    const text = `hello from ${cfg.node_ids[1]} at ${Date.now()}`;
    await b.page.getByLabel("Room", { exact: true }).fill(room);
    await b.page.getByLabel("Event", { exact: true }).fill("demo");
    await b.page.getByLabel("Data (JSON)", { exact: true }).fill(JSON.stringify({ text }));
    await b.page.getByRole("button", { name: "Publish", exact: true }).click();
    await b.page.locator("#publish-result.ok").waitFor();

    const entry = a.page.locator("#log li", { hasText: text });
    await entry.waitFor({ timeout: 10000 });
    check((await entry.locator(".event").textContent()) === "demo", "wrong event name in the log");
    await a.page.screenshot({ path: `${outDir}/browser-node0-received.png`, fullPage: true });
    await b.page.screenshot({ path: `${outDir}/browser-node1-published.png`, fullPage: true });
    check(a.problems.length === 0 && b.problems.length === 0,
      `page errors: ${[...a.problems, ...b.problems].join("; ")}`);
    return `screenshots in ${outDir}`;
  } finally {
    await browser.close();
  }
});
process.exit(0);
