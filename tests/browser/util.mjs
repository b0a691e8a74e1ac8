// What the browser test scripts share.

/** Ends the run with a failure message. */
export function fail(message) {
  console.error("FAIL: " + message);
  process.exit(1);
}

/** Polls `fn` every 100 ms until it returns a truthy value, which it returns; fails after `ms`. */
export async function waitFor(what, fn, ms = 30000) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Publishes `body` (JSON) under `key` through the gateway at `base`; records it in `sent`
 * ("partition:offset" -> its JSON text) and returns "partition:offset".
 */
export async function publishRecord(base, topic, key, body, sent) {
  const r = await fetch(`${base}/v1/publish/${topic}?key=${key}`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  });
  if (!r.ok) fail(`publish answered ${r.status}: ${await r.text()}`);
  const { partition, offset } = await r.json();
  sent.set(`${partition}:${offset}`, JSON.stringify(body));
  return `${partition}:${offset}`;
}
