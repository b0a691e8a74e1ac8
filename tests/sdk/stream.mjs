// A Node.js service consuming a channel through @kgate/client (installed from its
// packed tarball): streams until it has `total` distinct records, across whatever
// happens to the gateway meanwhile (tests/it/sdk.rs kills it with SIGKILL).
//   node stream.mjs <gateway URL> <channel> <total> <transport> [session]
// Prints `received <n>` as records arrive and, at the end, one JSON line.
import { Client } from "@kgate/client";

const [url, channel, total, transport, session] = process.argv.slice(2);
const seen = new Set();
let duplicates = 0;
let lastReport = 0;
const client = new Client({ url, channels: [channel], from: "earliest", session: session || null,
  transports: [transport], backoff: { initialMs: 200, maxMs: 1000 }, pollWaitMs: 2000 });
client.on("state", (s) => console.error(`state ${s.state} ${JSON.stringify(s.detail)}`));
client.on("error", (e) => console.error(`error ${e.code}: ${e.message}`));
client.on("data", (e) => {
  const id = `${e.partition}:${e.offset}`;
  if (seen.has(id)) duplicates++;
  seen.add(id);
  if (seen.size - lastReport >= 10 || seen.size >= Number(total)) {
    lastReport = seen.size;
    console.log(`received ${seen.size}`);
  }
  if (seen.size >= Number(total)) {
    console.log(JSON.stringify({ received: seen.size, duplicates, reconnects: client.reconnects, offsets: [...seen] }));
    client.close();
    process.exit(0);
  }
});
setTimeout(() => { console.error(`timed out with ${seen.size} of ${total}`); process.exit(1); }, 90000);
client.connect();
