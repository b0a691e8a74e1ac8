// The Kafka-to-WebSocket bridge as teams usually write it: one kafkajs
// consumer, and every record sent to every connected ws client as JSON.
// A baseline for `kgate bench fanout`, started by the bench itself.
//   BROKERS=127.0.0.1:9092 TOPIC=t PORT=8090 node bridge.js
const { Kafka, logLevel } = require('kafkajs');
const { WebSocketServer, WebSocket } = require('ws');

const brokers = (process.env.BROKERS || '127.0.0.1:9092').split(',');
const topic = process.env.TOPIC || 'prices';
const port = Number(process.env.PORT || 8090);

const kafka = new Kafka({ clientId: 'bridge', brokers, logLevel: logLevel.WARN });
// Fetch wait tuned down from kafkajs's 5 s default, as a latency-minded team would.
const consumer = kafka.consumer({ groupId: `bridge-${process.pid}`, maxWaitTimeInMs: 10 });

async function main() {
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const frame = JSON.stringify({
        topic,
        partition,
        offset: message.offset,
        key: message.key && message.key.toString(),
        value: message.value && message.value.toString(),
      });
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(frame);
      }
    },
  });
  console.log(`bridge serving ${topic} on ws://127.0.0.1:${port}/`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
