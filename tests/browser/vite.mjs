// A page built with Vite that imports @kgate/client (installed from its packed
// tarball into tests/sdk), in Debian's chromium. Run by tests/it/sdk.rs:
//   node tests/browser/vite.mjs <page URL> <gateway base URL> <topic>
// Exits 0 when every check passed; prints one line per check.
import { chromium } from "playwright-core";
import { fail, publishRecord, waitFor } from "./util.mjs";

const [pageUrl, base, topic] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const sent = new Map();
let seq = 0;

/** Publishes `n` records through the gateway; returns "partition:offset" of each. */
async function publish(n) {
  const landed = [];
  for (let i = 0; i < n; i++) {
    const body = { seq: seq++, symbol: ["AAPL", "MSFT"][seq % 2], price: 100 + seq / 4 };
    landed.push(await publishRecord(base, topic, body.symbol, body, sent));
  }
  return landed;
}

/** What the page received: positions, with values checked against what was published. */
async function received(page) {
  const got = await page.evaluate(() => window.received);
  for (const { at, data } of got) {
    if (sent.has(at) && JSON.stringify(data) !== sent.get(at)) fail(`${at} carried ${JSON.stringify(data)}, published ${sent.get(at)}`);
  }
  return got.map((r) => r.at);
}

const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => fail("page error: " + e.message));
  // Delta frames (JSON arrays) among the WebSocket messages the page received.
  let deltas = 0;
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketFrameReceived", ({ response }) => {
    if (response.opcode === 1 && response.payloadData.startsWith("[")) deltas++;
  });
  await page.goto(`${pageUrl}?gateway=${encodeURIComponent(base)}&channel=${encodeURIComponent(topic)}`);
  await waitFor("the client to connect", () => page.evaluate(() => window.kgateClient && window.kgateClient.state === "connected"));
  const transport = await page.evaluate(() => window.kgateClient.transport);
  await page.waitForTimeout(500);
  const first = await publish(20);
  await waitFor("20 live records", async () => (await received(page)).length >= 20);
  const shown = await page.evaluate(() => document.querySelectorAll("#records li").length);
  if (shown < 20) fail(`the page lists ${shown} records`);
  console.log(`ok: the Vite-built page imported @kgate/client and shows ${shown} live records over ${transport}`);

  // Cut the connection and hold the reconnect about four seconds while records land.
  await page.evaluate(() => {
    window.kgateClient.options.backoff.initialMs = 4000;
    Math.random = () => 0.99;
    window.kgateClient.dropConnection();
  });
  const during = await publish(20);
  await waitFor("the resume", () => page.evaluate(() => window.kgateClient.reconnects >= 1 && window.kgateClient.state === "connected"));
  const all = first.concat(during);
  await waitFor("every record after the resume", async () => (await received(page)).length >= all.length);
  await page.waitForTimeout(500);
  const got = await received(page);
  const missing = all.filter((x) => !got.includes(x));
  const dupes = got.length - new Set(got).size;
  if (missing.length || dupes) fail(`after the resume: ${missing.length} missing, ${dupes} duplicates`);
  console.log(`ok: after a dropped connection the page resumed with all ${all.length} records, none twice`);
  if (deltas === 0) fail("no delta frame reached the page");
  console.log(`ok: every record carried the value published; ${deltas} arrived as deltas, applied by the packaged client`);
} finally {
  await browser.close();
}
