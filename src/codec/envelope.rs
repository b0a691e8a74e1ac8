//! The binary event of subprotocol `kgate.v1.avro`: one Avro datum of
//! `schemas/envelope.avsc` per WebSocket binary message, carrying the record's
//! key, headers and value bytes as they are in Kafka. Encoded by hand (it is
//! the hot path and a fixed schema); the tests decode it with apache-avro.

use bytes::{BufMut, Bytes, BytesMut};

use super::RecordMeta;

/// The envelope schema, as shipped in `schemas/`.
pub const ENVELOPE_SCHEMA: &str = include_str!("../../schemas/envelope.avsc");

/// Encodes one record as an envelope datum.
pub fn encode_envelope(
    meta: &RecordMeta,
    timestamp: Option<i64>,
    key: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
    value: Option<&[u8]>,
) -> Bytes {
    let size = 32
        + meta.topic.len()
        + key.map_or(0, <[u8]>::len)
        + value.map_or(0, <[u8]>::len)
        + headers
            .iter()
            .map(|(n, v)| 12 + n.len() + v.map_or(0, <[u8]>::len))
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    put_bytes(&mut out, meta.topic.as_bytes());
    put_long(&mut out, i64::from(meta.partition));
    put_long(&mut out, meta.offset);
    put_optional(&mut out, timestamp, put_long);
    put_optional(&mut out, key, put_bytes);
    if !headers.is_empty() {
        // One block holding every entry, then the empty block that ends the map.
        put_long(&mut out, headers.len() as i64);
        for (name, value) in headers {
            put_bytes(&mut out, name.as_bytes());
            put_optional(&mut out, *value, put_bytes);
        }
    }
    put_long(&mut out, 0);
    put_optional(&mut out, value, put_bytes);
    out.freeze()
}

/// Avro `long`/`int`: zig-zag, then base-128 varint.
fn put_long(out: &mut BytesMut, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.put_slice(b);
}

/// A `["null", T]` union: branch 0 is null, branch 1 the value.
fn put_optional<T>(out: &mut BytesMut, v: Option<T>, put: fn(&mut BytesMut, T)) {
    match v {
        None => put_long(out, 0),
        Some(v) => {
            put_long(out, 1);
            put(out, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;
    use apache_avro::types::Value;

    fn decode(datum: &[u8]) -> Value {
        let schema = Schema::parse_str(ENVELOPE_SCHEMA).unwrap();
        let mut reader = datum;
        let v = apache_avro::from_avro_datum(&schema, &mut reader, None).unwrap();
        assert!(reader.is_empty(), "nothing left over");
        v
    }

    #[test]
    fn apache_avro_reads_what_we_write() {
        let meta = RecordMeta {
            topic: "prices".into(),
            partition: 7,
            offset: -1 + (1 << 40),
        };
        let v = decode(&encode_envelope(
            &meta,
            Some(1_700_000_000_000),
            Some(b"AAPL"),
            &[("src", Some(b"x")), ("nil", None)],
            Some(&[0, 1, 2]),
        ));
        let Value::Record(fields) = v else {
            panic!("{v:?}")
        };
        let get = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.clone();
        assert_eq!(get("topic"), Value::String("prices".into()));
        assert_eq!(get("partition"), Value::Int(7));
        assert_eq!(get("offset"), Value::Long((1 << 40) - 1));
        assert_eq!(
            get("timestamp"),
            Value::Union(1, Box::new(Value::Long(1_700_000_000_000)))
        );
        assert_eq!(
            get("key"),
            Value::Union(1, Box::new(Value::Bytes(b"AAPL".to_vec())))
        );
        assert_eq!(
            get("value"),
            Value::Union(1, Box::new(Value::Bytes(vec![0, 1, 2])))
        );
        let Value::Map(headers) = get("headers") else {
            panic!()
        };
        assert_eq!(
            headers["src"],
            Value::Union(1, Box::new(Value::Bytes(b"x".to_vec())))
        );
        assert_eq!(headers["nil"], Value::Union(0, Box::new(Value::Null)));

        let tombstone = decode(&encode_envelope(&meta, None, None, &[], None));
        let Value::Record(fields) = tombstone else {
            panic!()
        };
        assert_eq!(
            fields.last().unwrap().1,
            Value::Union(0, Box::new(Value::Null))
        );
    }
}
