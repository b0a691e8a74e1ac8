//! Resume cursors for the HTTP transports (the SSE event id, the long-poll cursor):
//! a client's next offset for each subscribed partition, in a compact, URL-safe
//! text form.
//!
//! Form `p1.<base64url>`: positions inline, sorted by (channel, partition), each a
//! varint channel index, a varint partition delta and a varint offset (3-6 bytes).
//! Form `c1.<checkpoint>.<base64url>`: a checkpoint of all positions kept by the
//! gateway, plus inline the positions that changed since. The transport writes a
//! new checkpoint whenever the changes outgrow a limit, so the cursor stays small
//! however many partitions a client reads (see `transport::resume`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One subscribed partition's next offset; `channel` indexes the client's channel list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub channel: u32,
    pub partition: i32,
    pub next: i64,
}

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Positions carried in the cursor itself.
    Inline(Vec<Position>),
    /// A stored checkpoint of positions, and the positions that changed since it.
    Checkpoint { id: String, delta: Vec<Position> },
}

/// Why a cursor could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor must start with \"p1.\" or \"c1.\"")]
    UnknownForm,
    #[error("the cursor's checkpoint is unknown or expired; start again without a cursor")]
    UnknownCheckpoint,
    #[error("cursor is not base64url")]
    NotBase64,
    #[error("cursor ends inside a position")]
    Truncated,
    #[error("cursor has a value out of range")]
    OutOfRange,
    #[error("cursor positions are not in order")]
    Unordered,
    #[error("cursor is longer than {0} bytes")]
    TooLong(usize),
}

/// The longest cursor text accepted (an HTTP header or query value stays well under this).
pub const MAX_CURSOR_BYTES: usize = 8 * 1024;

impl Cursor {
    /// The text form.
    pub fn encode(&self) -> String {
        match self {
            Cursor::Inline(positions) => {
                format!("p1.{}", URL_SAFE_NO_PAD.encode(encode_positions(positions)))
            }
            Cursor::Checkpoint { id, delta } => {
                format!(
                    "c1.{id}.{}",
                    URL_SAFE_NO_PAD.encode(encode_positions(delta))
                )
            }
        }
    }

    /// Parses the text form; never panics, whatever the input.
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::TooLong(MAX_CURSOR_BYTES));
        }
        if let Some(rest) = text.strip_prefix("c1.") {
            let (id, body) = rest.split_once('.').ok_or(CursorError::UnknownForm)?;
            let valid_id =
                !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid_id {
                return Err(CursorError::UnknownForm);
            }
            let delta = decode_positions(&base64(body)?)?;
            return Ok(Cursor::Checkpoint {
                id: id.to_string(),
                delta,
            });
        }
        let body = text.strip_prefix("p1.").ok_or(CursorError::UnknownForm)?;
        Ok(Cursor::Inline(decode_positions(&base64(body)?)?))
    }
}

fn base64(text: &str) -> Result<Vec<u8>, CursorError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CursorError::NotBase64)
}

/// Positions as varints, sorted; partitions of one channel are delta-encoded.
pub fn encode_positions(positions: &[Position]) -> Vec<u8> {
    let mut sorted = positions.to_vec();
    sorted.sort();
    let mut bytes = Vec::with_capacity(sorted.len() * 4);
    let mut last = (u32::MAX, 0i32);
    for p in &sorted {
        let base = if p.channel == last.0 { last.1 } else { 0 };
        put_varint(&mut bytes, u64::from(p.channel));
        put_varint(&mut bytes, (p.partition - base) as u64);
        put_varint(&mut bytes, p.next as u64);
        last = (p.channel, p.partition);
    }
    bytes
}

/// The inverse of [`encode_positions`]; never panics, whatever the input.
pub fn decode_positions(bytes: &[u8]) -> Result<Vec<Position>, CursorError> {
    let mut input = bytes;
    let mut positions = Vec::new();
    let mut last: Option<(u32, i32)> = None;
    while !input.is_empty() {
        let channel =
            u32::try_from(take_varint(&mut input)?).map_err(|_| CursorError::OutOfRange)?;
        let delta = take_varint(&mut input)?;
        let next = i64::try_from(take_varint(&mut input)?).map_err(|_| CursorError::OutOfRange)?;
        let base = match last {
            Some((c, p)) if c == channel => i64::from(p),
            Some((c, _)) if c > channel => return Err(CursorError::Unordered),
            _ => 0,
        };
        let partition = i64::try_from(delta)
            .ok()
            .and_then(|d| base.checked_add(d))
            .and_then(|p| i32::try_from(p).ok())
            .ok_or(CursorError::OutOfRange)?;
        if last == Some((channel, partition)) {
            return Err(CursorError::Unordered);
        }
        positions.push(Position {
            channel,
            partition,
            next,
        });
        last = Some((channel, partition));
    }
    Ok(positions)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, CursorError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first().ok_or(CursorError::Truncated)?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(CursorError::OutOfRange);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CursorError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn positions() -> impl Strategy<Value = Vec<Position>> {
        proptest::collection::btree_map((0u32..50, 0i32..100_000), 0i64..i64::MAX, 0..64).prop_map(
            |m| {
                m.into_iter()
                    .map(|((channel, partition), next)| Position {
                        channel,
                        partition,
                        next,
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn inline_cursors_round_trip(ps in positions()) {
            let text = Cursor::Inline(ps.clone()).encode();
            prop_assert_eq!(Cursor::decode(&text), Ok(Cursor::Inline(ps)));
        }

        #[test]
        fn any_text_decodes_or_errs_without_panic(text in ".{0,200}") {
            let _ = Cursor::decode(&text);
            let _ = Cursor::decode(&format!("p1.{text}"));
            let _ = Cursor::decode(&format!("c1.{text}"));
        }

        #[test]
        fn any_bytes_decode_or_err_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Cursor::decode(&format!("p1.{}", URL_SAFE_NO_PAD.encode(bytes)));
        }
    }

    #[test]
    fn a_position_costs_a_few_bytes() {
        let ps: Vec<Position> = (0..64)
            .map(|p| Position {
                channel: 0,
                partition: p,
                next: 1_000_000,
            })
            .collect();
        let text = Cursor::Inline(ps).encode();
        // 64 partitions at offset one million: 1 + 1 + 3 bytes each, base64 adds a third.
        assert!(text.len() < 64 * 5 * 4 / 3 + 8, "{} bytes", text.len());
        let checkpoint = Cursor::Checkpoint {
            id: "a1b2".into(),
            delta: vec![Position {
                channel: 1,
                partition: 3,
                next: 9,
            }],
        };
        assert_eq!(Cursor::decode(&checkpoint.encode()), Ok(checkpoint));
        assert_eq!(
            Cursor::decode("c1.bad id.AAA"),
            Err(CursorError::UnknownForm)
        );
        assert_eq!(Cursor::decode("x"), Err(CursorError::UnknownForm));
    }
}
