//! Avro payloads: a parsed writer schema, datum decoding, and the JSON a client
//! receives.
//!
//! JSON mapping (docs/protocol.md, "Avro topics"): unions are unwrapped to the
//! value they hold, enums and UUIDs become strings, `bytes` and `fixed` become
//! base64 strings, decimals become exact decimal strings ("101.25"), date and
//! time logical types keep their numeric Avro value.

use std::collections::HashMap;
use std::io::Cursor;

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::types::Value as Avro;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json};

use super::payload::DecodeError;

/// The first byte of a record in Confluent wire format.
pub const CONFLUENT_MAGIC: u8 = 0;

/// A writer schema ready to decode datums, with its named types resolved.
#[derive(Debug)]
pub struct AvroSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl AvroSchema {
    /// Parses a schema from its JSON text.
    pub fn parse(text: &str) -> Result<AvroSchema, String> {
        let schema = Schema::parse_str(text).map_err(|e| e.to_string())?;
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| e.to_string())?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        Ok(AvroSchema { schema, names })
    }

    /// Decodes one datum (no framing) into its JSON text.
    pub fn to_json(&self, datum: &[u8]) -> Result<String, DecodeError> {
        let mut reader = Cursor::new(datum);
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None)
            .map_err(|e| DecodeError::Datum(e.to_string()))?;
        // A datum of another schema often decodes "successfully" but leaves bytes behind.
        let trailing = datum.len() - reader.position() as usize;
        if trailing > 0 {
            return Err(DecodeError::Trailing { trailing });
        }
        Ok(self.json(value, &self.schema).to_string())
    }

    fn json(&self, value: Avro, schema: &Schema) -> Json {
        let schema = match schema {
            Schema::Ref { name } => self.names.get(name).unwrap_or(schema),
            other => other,
        };
        match value {
            Avro::Null => Json::Null,
            Avro::Boolean(b) => b.into(),
            Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => n.into(),
            Avro::Long(n)
            | Avro::TimeMicros(n)
            | Avro::TimestampMillis(n)
            | Avro::TimestampMicros(n)
            | Avro::TimestampNanos(n)
            | Avro::LocalTimestampMillis(n)
            | Avro::LocalTimestampMicros(n)
            | Avro::LocalTimestampNanos(n) => n.into(),
            // Non-finite floats have no JSON number; they become null.
            Avro::Float(f) => {
                serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
            }
            Avro::Double(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
            Avro::Bytes(b) | Avro::Fixed(_, b) => BASE64.encode(b).into(),
            Avro::String(s) | Avro::Enum(_, s) => s.into(),
            Avro::Uuid(u) => u.to_string().into(),
            Avro::Decimal(d) => {
                let scale = match schema {
                    Schema::Decimal(d) => d.scale,
                    _ => 0,
                };
                decimal_text(&num_bigint::BigInt::from(d).to_string(), scale).into()
            }
            Avro::BigDecimal(d) => d.to_string().into(),
            Avro::Duration(d) => serde_json::json!({
                "months": u32::from(d.months()),
                "days": u32::from(d.days()),
                "millis": u32::from(d.millis()),
            }),
            Avro::Union(index, inner) => {
                let variant = match schema {
                    Schema::Union(u) => u.variants().get(index as usize),
                    _ => None,
                };
                self.json(*inner, variant.unwrap_or(&Schema::Null))
            }
            Avro::Array(items) => {
                let item_schema = match schema {
                    Schema::Array(a) => &*a.items,
                    _ => &Schema::Null,
                };
                items
                    .into_iter()
                    .map(|v| self.json(v, item_schema))
                    .collect()
            }
            Avro::Map(entries) => {
                let value_schema = match schema {
                    Schema::Map(m) => &*m.types,
                    _ => &Schema::Null,
                };
                let map: Map<String, Json> = entries
                    .into_iter()
                    .map(|(k, v)| (k, self.json(v, value_schema)))
                    .collect();
                Json::Object(map)
            }
            Avro::Record(fields) => {
                let field_schemas = match schema {
                    Schema::Record(r) => r.fields.as_slice(),
                    _ => &[],
                };
                let map: Map<String, Json> = fields
                    .into_iter()
                    .map(|(name, v)| {
                        let s = field_schemas
                            .iter()
                            .find(|f| f.name == name)
                            .map_or(&Schema::Null, |f| &f.schema);
                        let json = self.json(v, s);
                        (name, json)
                    })
                    .collect();
                Json::Object(map)
            }
        }
    }
}

/// Splits a Confluent-framed payload into its schema id and datum.
pub fn confluent_frame(payload: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    match payload {
        [CONFLUENT_MAGIC, a, b, c, d, datum @ ..] => {
            Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum))
        }
        _ => Err(DecodeError::NotConfluentFramed { len: payload.len() }),
    }
}

/// Places the decimal point `scale` digits from the right of an unscaled integer's digits.
fn decimal_text(unscaled: &str, scale: usize) -> String {
    if scale == 0 {
        return unscaled.to_string();
    }
    let (sign, digits) = match unscaled.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", unscaled),
    };
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::to_avro_datum;
    use apache_avro::types::Record;

    const TICK: &str = r#"{"type":"record","name":"Tick","namespace":"kgate.test","fields":[
        {"name":"symbol","type":"string"},
        {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
        {"name":"size","type":["null","long"]},
        {"name":"side","type":{"type":"enum","name":"Side","symbols":["BUY","SELL"]}},
        {"name":"venues","type":{"type":"array","items":"string"}},
        {"name":"again","type":["null","Side"]}]}"#;

    #[test]
    fn decodes_a_record_to_plain_json() {
        let schema = AvroSchema::parse(TICK).unwrap();
        let mut r = Record::new(&schema.schema).unwrap();
        r.put("symbol", "AAPL");
        r.put(
            "price",
            Avro::Decimal(apache_avro::Decimal::from(10125_i64.to_be_bytes().to_vec())),
        );
        r.put("size", Avro::Union(1, Box::new(Avro::Long(300))));
        r.put("side", Avro::Enum(1, "SELL".into()));
        r.put("venues", Avro::Array(vec![Avro::String("XNAS".into())]));
        r.put(
            "again",
            Avro::Union(1, Box::new(Avro::Enum(0, "BUY".into()))),
        );
        let datum = to_avro_datum(&schema.schema, r).unwrap();
        let json: Json = serde_json::from_str(&schema.to_json(&datum).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"symbol":"AAPL","price":"101.25","size":300,"side":"SELL",
                               "venues":["XNAS"],"again":"BUY"})
        );
    }

    #[test]
    fn refuses_garbage_and_trailing_bytes() {
        let schema = AvroSchema::parse(
            r#"{"type":"record","name":"R","fields":[{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(schema.to_json(&[0x02]).unwrap(), r#"{"n":1}"#);
        assert!(matches!(
            schema.to_json(&[0x02, 0x00]),
            Err(DecodeError::Trailing { trailing: 1 })
        ));
        assert!(matches!(schema.to_json(&[]), Err(DecodeError::Datum(_))));
    }

    #[test]
    fn confluent_framing_and_decimals() {
        assert_eq!(confluent_frame(&[0, 0, 0, 1, 2, 9]), Ok((258, &[9][..])));
        assert!(confluent_frame(&[1, 0, 0, 0, 1]).is_err());
        assert!(confluent_frame(&[0, 0]).is_err());
        assert_eq!(decimal_text("5", 2), "0.05");
        assert_eq!(decimal_text("-10125", 2), "-101.25");
        assert_eq!(decimal_text("42", 0), "42");
    }
}
