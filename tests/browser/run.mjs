// Browser tests of the SDK and the demo page in Debian's chromium, driven by
// playwright-core. Run by tests/it/browser.rs against a live gateway:
//   node tests/browser/run.mjs <gateway base URL> <prices topic> <telemetry topic> <artifact dir>
// Exits 0 when every check passed; prints one line per check.
import { chromium } from "playwright-core";
import { fail, publishRecord, waitFor } from "./util.mjs";
import { mkdirSync } from "node:fs";

const [base, prices, telemetry, artifacts] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
let symbolSeq = 0;
/** The value published at each "partition:offset". */
const sent = new Map();

/** Publishes `n` ticker records through the gateway; returns "partition:offset" of each. */
async function publish(n) {
  const landed = [];
  for (let i = 0; i < n; i++) {
    const symbol = ["AAPL", "MSFT", "NVDA", "AMZN"][symbolSeq++ % 4];
    const price = 100 + (symbolSeq % 17);
    const body = { symbol, price, change: 0.5, change_pct: 0.5, bid: price - 0.05, ask: price + 0.05, volume: i };
    landed.push(await publishRecord(base, prices, symbol, body, sent));
  }
  return landed;
}

/** The "partition:offset" of every prices event the page has received. */
async function received(page) {
  return page.evaluate((topic) =>
    window.kgateEvents.filter((e) => e[0] === topic).map((e) => `${e[1]}:${e[2]}`), prices);
}

async function openDemo(browser, query, init) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on("pageerror", (e) => fail("page error: " + e.message));
  // The Sec-WebSocket-Extensions answer of every WebSocket handshake, from the DevTools protocol.
  page.wsExtensions = [];
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  // Delta frames (JSON arrays) among the WebSocket messages received.
  page.wsDeltas = 0;
  cdp.on("Network.webSocketFrameReceived", ({ response }) => {
    if (response.opcode === 1 && response.payloadData.startsWith("[")) page.wsDeltas++;
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ response }) => {
    const name = Object.keys(response.headers).find((h) => h.toLowerCase() === "sec-websocket-extensions");
    page.wsExtensions.push(name ? response.headers[name] : "");
  });
  if (init) await page.addInitScript(init);
  await page.goto(`${base}/?prices=${prices}&telemetry=${telemetry}${query}`);
  await waitFor("the client to connect", () => page.evaluate(() => window.kgateClient && window.kgateClient.state === "connected"));
  // Subscribed: the live marker of both channels has been handled.
  await page.waitForTimeout(500);
  return page;
}

function checkAll(label, got, want) {
  const missing = want.filter((x) => !got.includes(x));
  const dupes = got.length - new Set(got).size;
  if (missing.length || dupes) fail(`${label}: ${missing.length} missing (${missing.slice(0, 5)}), ${dupes} duplicates`);
}

/** Fails unless every prices event the page got carries the value published there. */
async function checkValues(label, page) {
  const events = await page.evaluate((topic) => window.kgateEvents.filter((e) => e[0] === topic), prices);
  const wrong = events.filter((e) => sent.has(`${e[1]}:${e[2]}`) && JSON.stringify(e[3]) !== sent.get(`${e[1]}:${e[2]}`));
  if (wrong.length) fail(`${label}: ${wrong.length} events with values other than published, e.g. ${JSON.stringify(wrong[0])}`);
  return events.length;
}

const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
try {
  // 1. Live data over WebSocket.
  const page = await openDemo(browser, "");
  const transport = await page.evaluate(() => window.kgateClient.transport);
  if (transport !== "websocket") fail(`expected the websocket transport, got ${transport}`);
  const first = await publish(20);
  await waitFor("20 live records", async () => (await received(page)).length >= 20);
  checkAll("live", await received(page), first);
  console.log(`ok: the page received ${first.length} live records over ${transport}`);

  // 2. Cut the connection; records published meanwhile arrive after the resume.
  // Hold the reconnect for about four seconds, so the records land while the page is away.
  await page.evaluate(() => {
    window.kgateClient.options.backoff.initialMs = 4000;
    Math.random = () => 0.99;
  });
  await page.click("#drop");
  const during = await publish(30);
  const away = await page.evaluate(() => window.kgateClient.state);
  if (away !== "reconnecting") fail(`expected the page to be away while publishing, it was ${away}`);
  await waitFor("the resume", () => page.evaluate(() => window.kgateClient.reconnects >= 1 && window.kgateClient.state === "connected"));
  const all = first.concat(during);
  await waitFor("every record after the resume", async () => (await received(page)).length >= all.length);
  await page.waitForTimeout(500);
  checkAll("resume", await received(page), all);
  const checked = await checkValues("resume", page);
  if (page.wsDeltas < 10) fail(`expected delta frames on the page's WebSocket, saw ${page.wsDeltas}`);
  console.log(`ok: all ${checked} events carried the published values, ${page.wsDeltas} of them arrived as deltas`);
  const replayed = await page.evaluate(() => window.kgateClient.replayedSinceReconnect);
  if (replayed === 0) fail("the records published while away were not replayed on reconnect");
  console.log(`ok: after the drop the page resumed with all ${all.length} records, no duplicate (${replayed} replayed after the reconnect)`);
  // Both connections (before and after the drop) carried compressed events.
  const deflated = page.wsExtensions.filter((e) => e.startsWith("permessage-deflate"));
  if (page.wsExtensions.length < 2 || deflated.length !== page.wsExtensions.length) {
    fail(`expected permessage-deflate on every handshake, got ${JSON.stringify(page.wsExtensions)}`);
  }
  console.log(`ok: chromium negotiated ${deflated[0]} on all ${deflated.length} handshakes`);
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: `${artifacts}/demo-page.png`, fullPage: true });
  console.log(`ok: screenshot saved to ${artifacts}/demo-page.png`);

  // 3. WebSocket blocked (as by a proxy that refuses upgrades): the SDK falls back to SSE.
  const blocked = await openDemo(browser, "", () => {
    window.WebSocket = function () {
      const fake = { readyState: 3, send() {}, close() {} };
      setTimeout(() => fake.onclose && fake.onclose({ code: 1006, reason: "blocked" }), 10);
      return fake;
    };
  });
  const fallback = await blocked.evaluate(() => window.kgateClient.transport);
  if (fallback !== "sse") fail(`expected the sse fallback, got ${fallback}`);
  const viaSse = await publish(25);
  await waitFor("25 records over SSE", async () => {
    const got = await received(blocked);
    return viaSse.every((x) => got.includes(x));
  });
  checkAll("sse", await received(blocked), viaSse);
  await checkValues("sse", blocked);
  console.log(`ok: with WebSocket blocked the SDK used ${fallback} and received all ${viaSse.length} records`);

  // 4. Neither WebSocket nor SSE: long-polling.
  const pollOnly = await openDemo(browser, "&transports=websocket,poll", () => {
    window.WebSocket = function () { throw new Error("blocked"); };
  });
  const polling = await pollOnly.evaluate(() => window.kgateClient.transport);
  if (polling !== "poll") fail(`expected the poll fallback, got ${polling}`);
  const viaPoll = await publish(15);
  await waitFor("15 records by long-polling", async () => {
    const got = await received(pollOnly);
    return viaPoll.every((x) => got.includes(x));
  });
  checkAll("poll", await received(pollOnly), viaPoll);
  await checkValues("poll", pollOnly);
  console.log(`ok: with WebSocket blocked and SSE not offered the SDK long-polled and received all ${viaPoll.length} records`);

  // 5. Reconnect policy, heartbeat timeout and acknowledgements, on the SDK directly.
  const sdk = await openDemo(browser, "");
  const delays = await sdk.evaluate(() => new Promise((resolve) => {
    Math.random = () => 0.999;
    const c = new KGate.Client({
      url: "http://127.0.0.1:9", channels: ["x"], transports: ["websocket"],
      backoff: { initialMs: 100, maxMs: 300, resetAfterMs: 60000, maxAttempts: 4 },
    });
    const seen = [];
    c.on("state", (s) => {
      if (s.state === "reconnecting") seen.push(s.detail.delayMs);
      if (s.state === "failed") resolve({ seen, reconnects: c.reconnects });
    });
    c.connect();
  }));
  if (JSON.stringify(delays.seen) !== JSON.stringify([99, 199, 299, 299]) || delays.reconnects !== 4) {
    fail(`backoff: expected full-jitter delays capped at 300 ms and a stop after 4 attempts, got ${JSON.stringify(delays)}`);
  }
  console.log(`ok: backoff delays ${JSON.stringify(delays.seen)} ms (exponential, capped), then failed after 4 attempts`);
  const silent = await sdk.evaluate(() => new Promise((resolve) => {
    const Real = window.WebSocket;
    // A socket that opens and then hears nothing, as behind a dead proxy.
    window.WebSocket = function () {
      const fake = { readyState: 1, send() {}, close() {} };
      setTimeout(() => fake.onopen && fake.onopen(), 10);
      return fake;
    };
    const c = new KGate.Client({ channels: ["x"], transports: ["websocket"], heartbeat: { intervalMs: 100, timeoutMs: 300 } });
    c.on("state", (s) => {
      if (s.state === "reconnecting") { c.close(); window.WebSocket = Real; resolve(s.detail.reason); }
    });
    c.connect();
  }));
  if (silent !== "heartbeat timeout") fail(`expected a heartbeat timeout, got ${silent}`);
  console.log("ok: a connection that goes silent is dropped by the heartbeat timeout");
  const session = "browser-" + Date.now();
  await sdk.evaluate(({ topic, session }) => {
    window.acked = [];
    const c = new KGate.Client({ channels: [topic], session, transports: ["websocket"] });
    c.on("data", (e) => window.acked.push(e.offset));
    window.sessionClient = c;
    c.connect();
  }, { topic: prices, session });
  await waitFor("the session client", () => sdk.evaluate(() => window.sessionClient.state === "connected"));
  await sdk.waitForTimeout(500);
  const acked = await publish(8);
  await waitFor("8 records on the session client", () => sdk.evaluate(() => window.acked.length >= 8));
  const want = {};
  acked.forEach((x) => { const [p, o] = x.split(":").map(Number); want[p] = Math.max(want[p] || 0, o + 1); });
  // The SDK acks once per partition every ackIntervalMs (1 s); the gateway commits every 20 ms.
  let positions = null;
  await waitFor("the acknowledged positions in the session", async () => {
    const stored = await (await fetch(`${base}/v1/admin/sessions/${session}`)).json();
    positions = stored.subscriptions && stored.subscriptions[0] && stored.subscriptions[0].positions;
    return positions && Object.entries(want).every(([p, next]) => positions[p] === next);
  }, 10000);
  for (const [p, next] of Object.entries(want)) {
    if (!positions || positions[p] !== next) fail(`session positions ${JSON.stringify(positions)} do not match the acknowledged ${JSON.stringify(want)}`);
  }
  console.log(`ok: the SDK acknowledged every event; the session's stored positions are ${JSON.stringify(positions)}`);

  // 4b. publish() over the open WebSocket: resolved once Kafka acknowledged the record,
  // which then reaches the subscriber; a refused one rejects with the gateway's code.
  const published = await sdk.evaluate(async (topic) => {
    const c = window.sessionClient;
    const landed = await c.publish(topic, { symbol: "AAPL", price: 123.45, change: 0.1, change_pct: 0.1, bid: 123.4, ask: 123.5, volume: 1 },
      { key: "AAPL", headers: { source: "sdk" } });
    let refused = null;
    try { await c.publish("no-such-topic", { x: 1 }); } catch (e) { refused = e.code; }
    return { landed, refused, transport: c.transport };
  }, prices);
  if (published.transport !== "websocket" || published.landed.topic !== prices || typeof published.landed.offset !== "number") {
    fail(`publish() over the WebSocket answered ${JSON.stringify(published)}`);
  }
  if (published.refused !== "unknown_topic") fail(`publish() to an unknown topic rejected with ${published.refused}, expected unknown_topic`);
  await waitFor("the published record on the subscriber", () => sdk.evaluate((o) => window.acked.includes(o), published.landed.offset));
  console.log(`ok: publish() over the WebSocket landed at ${published.landed.partition}:${published.landed.offset} and reached the subscriber; an unknown topic was refused with ${published.refused}`);

  // 5. A board opened mid-session shows every symbol at once, from the snapshot,
  // with nothing published since; then live updates continue after it.
  const board = await openDemo(browser, `&snapshot=${prices}`);
  const latest = await waitFor("the snapshot", async () => {
    const got = await received(board);
    return got.length >= 4 ? got : null;
  }, 10000);
  const symbols = await board.evaluate(() => document.querySelectorAll("#board tbody tr").length);
  if (symbols !== 4 || latest.length !== 4) fail(`the board shows ${symbols} symbols from a snapshot of ${latest.length} events, expected 4 and 4`);
  const more = await publish(4);
  await waitFor("live after the snapshot", async () => (await received(board)).length >= latest.length + 4);
  checkAll("snapshot then live", await received(board), latest.concat(more));
  console.log(`ok: a board opened mid-session showed all ${symbols} symbols from a snapshot of ${latest.length} events, then ${more.length} live updates`);

  // 6. The status page plots the gateway's own metrics: connections and the delivered rate.
  const status = await browser.newPage({ viewport: { width: 1280, height: 700 } });
  status.on("pageerror", (e) => fail("status page error: " + e.message));
  await status.goto(`${base}/status`);
  await waitFor("two status samples", () => status.evaluate(() => window.kgateStatus && window.kgateStatus.connections.length >= 2));
  const delivering = publish(40);
  const seen = await waitFor("a delivered rate on the status page", () => status.evaluate(() => {
    const s = window.kgateStatus;
    return s && Math.max.apply(null, s.rate) > 0 && s.connections[s.connections.length - 1] > 0 ? s : null;
  }));
  await delivering;
  await status.screenshot({ path: `${artifacts}/status-page.png` });
  console.log(`ok: the status page plots ${seen.connections[seen.connections.length - 1]} connections and up to ${Math.round(Math.max.apply(null, seen.rate))} records/s delivered`);

  // 7. A misspelled option is reported, not silently ignored.
  const warned = await sdk.evaluate(() => {
    const warnings = [];
    const real = console.warn;
    console.warn = (m) => warnings.push(String(m));
    const c = new KGate.Client({ channels: ["x"], initialMs: 5, backoff: { initialDelayMs: 5 } });
    console.warn = real;
    return { warnings, initialMs: c.options.backoff.initialMs };
  });
  if (warned.warnings.length !== 2 || !warned.warnings[0].includes("initialMs") || !warned.warnings[1].includes("backoff.initialDelayMs") || warned.initialMs !== 500) {
    fail(`unknown options: expected two warnings naming them and the defaults kept, got ${JSON.stringify(warned)}`);
  }
  console.log(`ok: unknown options are warned about: ${warned.warnings[1]}`);

  // 8. Long-polling on a node that starts draining: the SDK reconnects with its backoff
  // (to another node, through a balancer) instead of polling the draining node in a loop.
  // Last: the gateway stays drained.
  const drained = await openDemo(browser, "&transports=poll");
  if ((await drained.evaluate(() => window.kgateClient.transport)) !== "poll") fail("expected the poll transport");
  await drained.evaluate(() => {
    window.kgateClient.options.backoff.initialMs = 1000;
    window.pollStates = [];
    window.kgateClient.on("state", (s) => window.pollStates.push(s));
  });
  let polls = 0;
  drained.on("request", (r) => { if (r.url().includes("/v1/poll")) polls++; });
  // publish() on a long-polling client goes over HTTP (POST /v1/publish) and reaches it.
  const overHttp = await drained.evaluate((topic) => window.kgateClient.publish(topic,
    { symbol: "MSFT", price: 321.5, change: 0.2, change_pct: 0.1, bid: 321.4, ask: 321.6, volume: 2 }, { key: "MSFT" }), prices);
  await waitFor("the record published over HTTP", async () => (await received(drained)).includes(`${overHttp.partition}:${overHttp.offset}`));
  console.log(`ok: publish() on a long-polling client went over HTTP and landed at ${overHttp.partition}:${overHttp.offset}`);
  const drain = await fetch(`${base}/v1/admin/drain`, { method: "POST" });
  if (!drain.ok) fail(`drain answered ${drain.status}`);
  await drained.waitForTimeout(3000);
  const states = await drained.evaluate(() => window.pollStates.map((s) => [s.state, s.detail && s.detail.reason]));
  const reasons = states.filter((s) => s[0] === "reconnecting").map((s) => s[1]);
  if (!reasons.length || !reasons[0].startsWith("closed 1001")) fail(`expected a reconnect for "closed 1001", got ${JSON.stringify(states)}`);
  if (polls > 8) fail(`${polls} polls in 3 s against a draining node: no backoff`);
  console.log(`ok: on a draining node the long-polling SDK reconnected with backoff (${reasons.join("; ")}; ${polls} requests in 3 s)`);
} finally {
  await browser.close();
}
