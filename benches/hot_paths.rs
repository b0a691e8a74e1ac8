//! Micro-benchmarks of the per-record hot paths: frame encoding (JSON, Avro
//! decode, binary envelope), routing one record to subscribers, and resume
//! cursors. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kgate::codec::avro::AvroSchema;
use kgate::codec::cursor::{Cursor, Position};
use kgate::codec::{Data, EncodedRecord, RecordMeta, TopicCodec, encode_envelope, encode_event};
use kgate::router::outbox::Outbox;
use kgate::router::{Channel, Router, TopicSpec};

const TICK: &str =
    r#"{"symbol":"AAPL","price":189.52,"change":0.31,"bid":189.5,"ask":189.54,"volume":1200}"#;

fn meta() -> RecordMeta {
    RecordMeta {
        topic: "prices".into(),
        partition: 1,
        offset: 1_234_567,
    }
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    let headers = [("source", Some(&b"feed-a"[..]))];
    let json = TopicCodec::plain(true);
    g.bench_function("json_event_frame", |b| {
        b.iter(|| {
            let kgate::codec::Decoded::Deliver(data) =
                json.decode(Some(black_box(TICK.as_bytes())))
            else {
                unreachable!()
            };
            encode_event(
                &meta(),
                Some(1_700_000_000_000),
                Some(b"AAPL"),
                &headers,
                &data,
            )
        })
    });
    let schema_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/tick.avsc"))
            .expect("schemas/tick.avsc");
    let schema = AvroSchema::parse(&schema_text).expect("tick schema");
    // symbol "AAPL", price 189.52 as decimal bytes, size 300, seq 7
    let datum = [
        &[8u8][..],
        b"AAPL",
        &[4, 0x4a, 0x08],
        &[2, 0xd8, 0x04],
        &[14],
    ]
    .concat();
    g.bench_function("avro_decode_to_json_frame", |b| {
        b.iter(|| {
            let text = schema.to_json(black_box(&datum)).expect("datum");
            encode_event(
                &meta(),
                Some(1_700_000_000_000),
                Some(b"AAPL"),
                &headers,
                &Data::Decoded(text),
            )
        })
    });
    g.bench_function("binary_envelope", |b| {
        b.iter(|| {
            encode_envelope(
                &meta(),
                Some(1_700_000_000_000),
                Some(b"AAPL"),
                &headers,
                Some(black_box(TICK.as_bytes())),
            )
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for subscribers in [1usize, 100, 1000] {
        let router = Router::new(vec![TopicSpec::json("prices", vec![0])], 1 << 20);
        let route = router.topic("prices").expect("route");
        let channel = Channel::parse("prices", 64).expect("channel");
        let outboxes: Vec<Arc<Outbox>> = (0..subscribers)
            .map(|_| Arc::new(Outbox::new(usize::MAX, usize::MAX)))
            .collect();
        for outbox in &outboxes {
            router.subscribe(route, &channel, None, outbox.clone(), false);
        }
        let mut offset = 0;
        let mut drained = kgate::router::outbox::Deliveries::default();
        g.throughput(Throughput::Elements(subscribers as u64));
        g.bench_with_input(
            BenchmarkId::new("dispatch_to_subscribers", subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let record = Arc::new(EncodedRecord::new(
                        RecordMeta {
                            topic: "prices".into(),
                            partition: 0,
                            offset,
                        },
                        Some(bytes::Bytes::from_static(b"AAPL")),
                        kgate::codec::Frame::from_static(TICK),
                    ));
                    offset += 1;
                    router.dispatch(route, &[record]);
                    // Keep outboxes from growing: the connection would drain them.
                    if offset % 64 == 0 {
                        for outbox in &outboxes {
                            outbox.drain_into(&mut drained);
                            drained.clear();
                        }
                    }
                })
            },
        );
    }
    g.finish();
}

fn cursors(c: &mut Criterion) {
    let mut g = c.benchmark_group("cursor");
    for partitions in [3u32, 64] {
        let positions: Vec<Position> = (0..partitions)
            .map(|p| Position {
                channel: p % 4,
                partition: p as i32,
                next: 1_000_000 + i64::from(p) * 977,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let cursor = Cursor::Inline(positions);
        let text = cursor.encode();
        g.bench_with_input(
            BenchmarkId::new("encode", partitions),
            &cursor,
            |b, cursor| b.iter(|| black_box(cursor).encode()),
        );
        g.bench_with_input(BenchmarkId::new("decode", partitions), &text, |b, text| {
            b.iter(|| Cursor::decode(black_box(text)).expect("cursor"))
        });
    }
    g.finish();
}

criterion_group!(benches, encoding, routing, cursors);
criterion_main!(benches);
