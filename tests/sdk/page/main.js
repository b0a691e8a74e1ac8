// A page that imports @kgate/client as an ES module (installed from the packed tarball)
// and shows the records of one channel; tests/browser/vite.mjs drives it in chromium.
//   ?gateway=http://host:port&channel=topic
import { Client } from "@kgate/client";

const params = new URLSearchParams(location.search);
const client = new Client({
  url: params.get("gateway"),
  channels: [params.get("channel")],
  from: "earliest",
  delta: true,
});
window.kgateClient = client;
window.received = [];
const $ = (id) => document.getElementById(id);
client.on("state", (s) => {
  $("state").textContent = s.state;
  $("reconnects").textContent = String(client.reconnects);
});
client.on("data", (e) => {
  window.received.push({ at: `${e.partition}:${e.offset}`, data: e.data });
  const item = document.createElement("li");
  item.textContent = `${e.partition}:${e.offset} ${JSON.stringify(e.data)}`;
  $("records").append(item);
  $("count").textContent = String(window.received.length);
});
client.connect();
