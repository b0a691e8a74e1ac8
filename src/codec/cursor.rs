//! Resume cursors for the HTTP transports (the SSE event id, the long-poll cursor):
//! a client's next offset for each subscribed partition, in a compact, URL-safe
//! text form.
//!
//! Form `p1.<base64url>`: positions inline, sorted by (channel, partition), each a
//! varint channel index, a varint partition delta and a varint offset. A position
//! costs 3-6 bytes, so the inline form grows with the partitions a client reads;
//! past a limit the transport keeps the positions server-side instead and the
//! cursor is the constant-size form `s1.<session>`, naming a durable session.

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
    /// Positions kept in the durable session with this id.
    Session(String),
}

/// Why a cursor could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor must start with \"p1.\" or \"s1.\"")]
    UnknownForm,
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
            Cursor::Session(id) => format!("s1.{id}"),
            Cursor::Inline(positions) => {
                let mut sorted = positions.clone();
                sorted.sort();
                let mut bytes = Vec::with_capacity(sorted.len() * 4);
                let mut last = (u32::MAX, 0i32);
                for p in &sorted {
                    // Partitions of one channel are delta-encoded; a new channel restarts at 0.
                    let base = if p.channel == last.0 { last.1 } else { 0 };
                    put_varint(&mut bytes, u64::from(p.channel));
                    put_varint(&mut bytes, (p.partition - base) as u64);
                    put_varint(&mut bytes, p.next as u64);
                    last = (p.channel, p.partition);
                }
                format!("p1.{}", URL_SAFE_NO_PAD.encode(bytes))
            }
        }
    }

    /// Parses the text form; never panics, whatever the input.
    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(CursorError::TooLong(MAX_CURSOR_BYTES));
        }
        if let Some(id) = text.strip_prefix("s1.") {
            return Ok(Cursor::Session(id.to_string()));
        }
        let body = text.strip_prefix("p1.").ok_or(CursorError::UnknownForm)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| CursorError::NotBase64)?;
        let mut input = bytes.as_slice();
        let mut positions = Vec::new();
        let mut last: Option<(u32, i32)> = None;
        while !input.is_empty() {
            let channel =
                u32::try_from(take_varint(&mut input)?).map_err(|_| CursorError::OutOfRange)?;
            let delta = take_varint(&mut input)?;
            let next =
                i64::try_from(take_varint(&mut input)?).map_err(|_| CursorError::OutOfRange)?;
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
        Ok(Cursor::Inline(positions))
    }
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
        assert_eq!(
            Cursor::decode("s1.alice-1"),
            Ok(Cursor::Session("alice-1".into()))
        );
        assert_eq!(Cursor::decode("x"), Err(CursorError::UnknownForm));
    }
}
