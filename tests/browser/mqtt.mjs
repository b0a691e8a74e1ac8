// mqtt.js (npm) in Debian's chromium over MQTT 5 on WebSocket, against a live gateway.
// Run by tests/it/mqtt.rs:
//   node tests/browser/mqtt.mjs <gateway base URL> <topic>
// Exits 0 when every check passed; prints one line per check.
import { chromium } from "playwright-core";
import { fail, waitFor } from "./util.mjs";
import { readFileSync } from "node:fs";

const [base, topic] = process.argv.slice(2);
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const mqttJs = readFileSync(new URL("./node_modules/mqtt/dist/mqtt.min.js", import.meta.url), "utf8");
const wsUrl = base.replace(/^http/, "ws") + "/mqtt";

/** Produces `values` through the gateway's HTTP publish, with key `key`. */
async function produce(key, values) {
  for (const v of values) {
    const r = await fetch(`${base}/v1/publish/${topic}?key=${key}`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(v),
    });
    if (!r.ok) fail(`publish answered ${r.status}: ${await r.text()}`);
  }
}

/** Connects mqtt.js in the page (persistent MQTT 5 session `clientId`), subscribes at QoS 1. */
async function connect(page, clientId) {
  return page.evaluate(({ url, clientId, filter }) => new Promise((resolve, reject) => {
    window.got = [];
    const client = mqtt.connect(url, {
      protocolVersion: 5, clientId, clean: false, reconnectPeriod: 0,
      properties: { sessionExpiryInterval: 600 },
    });
    window.client = client;
    client.on("message", (t, payload, packet) => window.got.push({ t, v: payload.toString(), qos: packet.qos, dup: packet.dup }));
    client.on("error", (e) => reject(String(e)));
    client.on("connect", (connack) => {
      if (connack.sessionPresent) return resolve({ sessionPresent: true });
      client.subscribe(filter, { qos: 1 }, (err, granted) => {
        if (err) return reject(String(err));
        resolve({ sessionPresent: false, granted: granted.map((g) => g.qos) });
      });
    });
  }), { url: wsUrl, clientId, filter: `${topic}/#` });
}

const browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => fail("page error: " + e.message));
  await page.goto(`${base}/healthz`);
  await page.addScriptTag({ content: mqttJs });

  // 1. A QoS 1 subscription receives live records.
  const first = await connect(page, "browser-1");
  if (first.sessionPresent || JSON.stringify(first.granted) !== "[1]") fail(`first connect: ${JSON.stringify(first)}`);
  await produce("dev-1", [{ n: 0 }, { n: 1 }, { n: 2 }]);
  const live = await waitFor("3 live records", async () => {
    const got = await page.evaluate(() => window.got);
    return got.length >= 3 && got;
  });
  if (live.some((m) => m.t !== `${topic}/dev-1` || m.qos !== 1)) fail(`live: ${JSON.stringify(live)}`);
  console.log(`ok: mqtt.js (MQTT 5 over WebSocket) received ${live.length} live records at QoS 1`);

  // 2. The session survives a disconnect: what was produced meanwhile arrives on reconnect.
  await page.evaluate(() => new Promise((r) => window.client.end(false, {}, r)));
  await produce("dev-1", [{ n: 3 }, { n: 4 }]);
  const second = await connect(page, "browser-1");
  if (!second.sessionPresent) fail("the session was not resumed");
  const missed = await waitFor("the 2 records produced while away", async () => {
    const got = await page.evaluate(() => window.got);
    return got.filter((m) => m.v === '{"n":3}' || m.v === '{"n":4}').length >= 2 && got;
  });
  console.log(`ok: after reconnecting, the resumed session (session present) received ${missed.length} records including both it missed`);

  // 3. The browser publishes at QoS 1; the record goes through Kafka back to its subscription.
  await page.evaluate((t) => new Promise((resolve, reject) => window.client.publish(`${t}/browser`, '{"from":"browser"}',
    { qos: 1, properties: { userProperties: { origin: "chromium" } } }, (e) => (e ? reject(String(e)) : resolve()))), topic);
  await waitFor("the published record to come back", async () =>
    (await page.evaluate(() => window.got)).some((m) => m.t === `${topic}/browser`));
  console.log("ok: a QoS 1 publish from the browser was acknowledged and came back through Kafka");
  await page.evaluate(() => window.client.end(true));
} finally {
  await browser.close();
}
