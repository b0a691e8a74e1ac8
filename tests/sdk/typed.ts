// A typed use of every part of @kgate/client's API, checked with `tsc --noEmit`
// (tests/it/sdk.rs). The lines marked @ts-expect-error must stay errors.
import kgate, { Client, type EventFrame, type StateChange, type PublishError } from "@kgate/client";

const client = new Client({
  url: "http://127.0.0.1:8080",
  channels: ["prices:AAPL", "telemetry"],
  from: "earliest",
  snapshot: ["prices:AAPL"],
  delta: true,
  maxRate: { "prices:AAPL": 10 },
  filter: { telemetry: { headers: { region: ["eu", null] } } },
  token: () => "jwt",
  session: "user-42:dashboard",
  transports: ["websocket", "poll"],
  ack: true,
  ackIntervalMs: 1000,
  backoff: { maxMs: 5000 },
  heartbeat: { intervalMs: 10000 },
  connectTimeoutMs: 5000,
  pollWaitMs: 20000,
});

client.on("data", (e: EventFrame) => {
  const where: string = `${e.topic}/${e.partition}@${e.offset}`;
  const key: string | undefined = e.key;
  void where, key, e.data;
});
client.on("state", (s: StateChange) => {
  if (s.state === "reconnecting") {
    const delay: number = s.detail.delayMs;
    void delay;
  } else if (s.state === "failed") {
    const reason: string = s.detail;
    void reason;
  }
});
client.on("gap", (g) => void (g.earliest - g.requested));
client.on("snapshot", (s) => void s.count);
client.on("live", (l) => void l.channel);
client.on("error", (e) => void e.code);
client.connect().dropConnection();

async function send(): Promise<number> {
  try {
    const landed = await client.publish("chat", { text: "hi" }, { key: "room-7", headers: { source: "web" } });
    return landed.offset;
  } catch (e) {
    return (e as PublishError).code.length;
  }
}
void send();
const next: Record<string, number> | undefined = client.positions["prices:AAPL"];
void next, kgate.version, client.state, client.transport, client.reconnects;
client.close();

// @ts-expect-error: not an option
new Client({ channel: "prices" });
// @ts-expect-error: not a transport
new Client({ transports: ["carrier-pigeon"] });
// @ts-expect-error: not an event
client.on("message", () => {});
