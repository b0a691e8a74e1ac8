"""Produces Avro ticks with a third-party Kafka client (confluent-kafka, which
bundles a current librdkafka) for kgate's tests, in two framings:

  plain      fastavro schemaless datums, no header (topics with `format = "avro"`)
  confluent  confluent-kafka's own AvroSerializer against a schema registry
             (magic byte, schema id, datum; `format = "avro_confluent"`)

Usage: produce_avro.py BOOTSTRAP TOPIC FRAMING COUNT SCHEMA_FILE [REGISTRY_URL]
Prints one JSON line per record: {"i", "partition", "offset"}; poison records
(`--poison`) follow the good ones and are marked "poison": true.
"""
import io
import json
import sys

import fastavro
from confluent_kafka import Producer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, topic, framing, count, schema_file = sys.argv[1:6]
registry_url = sys.argv[6] if len(sys.argv) > 6 and not sys.argv[6].startswith("--") else None
poison = "--poison" in sys.argv
schema_text = open(schema_file).read()

if framing == "plain":
    parsed = fastavro.parse_schema(json.loads(schema_text))

    def encode(value):
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, value)
        return out.getvalue()
elif framing == "confluent":
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer

    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), schema_text)
    ctx = SerializationContext(topic, MessageField.VALUE)

    def encode(value):
        return serializer(value, ctx)
else:
    sys.exit(f"framing must be plain or confluent, not {framing!r}")

producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
delivered = []


def on_delivery(err, msg, i, bad):
    if err is not None:
        sys.exit(f"delivery failed: {err}")
    delivered.append({"i": i, "partition": msg.partition(), "offset": msg.offset(), "poison": bad})


records = []
for i in range(int(count)):
    tick = {"symbol": f"S{i % 5}", "price": f"{100 + i}.25", "size": i if i % 2 else None, "seq": i}
    # The decimal is written as bytes: fastavro takes a Decimal for it.
    from decimal import Decimal
    tick["price"] = Decimal(tick["price"])
    records.append((tick["symbol"].encode(), encode(tick), False))
if poison:
    # Framed with an id no registry holds, then bytes that are no datum of the schema.
    records.append((b"S0", b"\x00\x00\x00\x03\xe7garbage", True))
    records.append((b"S0", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", True))
    # A good record after the poison: the partition must keep flowing.
    tick = {"symbol": "S0", "price": Decimal("1.25"), "size": None, "seq": int(count)}
    records.append((b"S0", encode(tick), False))
for i, (key, value, bad) in enumerate(records):
    # One partition keeps the order the test checks simple.
    producer.produce(topic, key=key, value=value, partition=0,
                     on_delivery=lambda err, msg, i=i, bad=bad: on_delivery(err, msg, i, bad))
    producer.poll(0)
producer.flush(30)
if len(delivered) != len(records):
    sys.exit(f"delivered {len(delivered)} of {len(records)}")
for d in sorted(delivered, key=lambda d: d["i"]):
    print(json.dumps(d))
