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
