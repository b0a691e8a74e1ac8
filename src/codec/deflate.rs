//! permessage-deflate (RFC 7692) payloads without context takeover: a message is
//! compressed on its own, so an event frame is compressed once and the result sent to
//! every recipient, and no connection keeps compressor state.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with; RFC 7692 §7.2.1 drops it from each message and the
/// receiver puts it back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    // Reset per message; one per thread saves allocating their state (tens of KB) each time.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// `frame` compressed, made once in `cell` and shared; `None` when it is shorter than
/// `min_bytes` or compressing does not shrink it.
pub fn once<'a>(
    cell: &'a OnceLock<Option<Bytes>>,
    frame: &str,
    min_bytes: usize,
) -> Option<&'a Bytes> {
    if frame.len() < min_bytes {
        return None;
    }
    cell.get_or_init(|| deflate(frame.as_bytes())).as_ref()
}

/// `payload` as one compressed message, or `None` when compressing does not shrink it.
pub fn deflate(payload: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        compressor.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let done = compressor.total_in() as usize;
            compressor
                .compress_vec(&payload[done..], &mut out, FlushCompress::Sync)
                .ok()?;
            // A sync flush is complete once all input is in and it left room to spare.
            if compressor.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(256);
        }
        out.truncate(out.len().checked_sub(TAIL.len())?);
        (out.len() < payload.len()).then(|| out.into())
    })
}

/// Why a compressed message from a client was refused.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    /// Inflating went past the message size limit (a decompression bomb, or just too big).
    #[error("the message inflates to more than {max} bytes")]
    TooLarge { max: usize },
    /// The bytes are not a deflate stream (or use context the sender was told not to keep).
    #[error("the compressed message is corrupt: {0}")]
    Corrupt(String),
}

/// Inflates one message, refusing it once its output passes `max` bytes: memory is
/// bounded by the limit, whatever the input claims.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        inflate_with(inflater, compressed, max)
    })
}

fn inflate_with(
    inflater: &mut Decompress,
    compressed: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    let bound = max.saturating_add(1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(3).clamp(64, bound));
    for input in [compressed, &TAIL[..]] {
        let mut used = 0;
        loop {
            let (before_in, before_out) = (inflater.total_in(), out.len());
            let status = inflater
                .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                .map_err(|e| InflateError::Corrupt(e.to_string()))?;
            used += (inflater.total_in() - before_in) as usize;
            if out.len() > max {
                return Err(InflateError::TooLarge { max });
            }
            if status == Status::StreamEnd || (used == input.len() && out.len() < out.capacity()) {
                break;
            }
            if out.len() == out.capacity() {
                // Grow by doubling, never past one byte over the limit.
                out.reserve_exact(out.len().min(bound - out.len()).max(1));
            } else if inflater.total_in() == before_in && out.len() == before_out {
                return Err(InflateError::Corrupt(
                    "the stream stops making progress".into(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deflated_message_inflates_to_itself() {
        let frame = br#"{"type":"event","channel":"prices","topic":"prices","partition":0,"offset":41,"key":"AAPL","timestamp":1764600000000,"data":{"symbol":"AAPL","price":101.52,"size":300}}"#;
        let compressed = deflate(frame).expect("a JSON frame shrinks");
        assert!(compressed.len() < frame.len());
        assert!(!compressed.ends_with(&TAIL), "the flush tail is dropped");
        assert_eq!(inflate(&compressed, frame.len()).unwrap(), frame);
        // The next message starts from a reset compressor: no context carried over.
        assert_eq!(deflate(frame).unwrap(), compressed);
    }

    #[test]
    fn short_or_random_payloads_are_not_compressed() {
        assert_eq!(deflate(b"{}"), None);
        // xorshift: bytes with no repeats for deflate to find.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(deflate(&noise), None);
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = deflate(&zeros).unwrap();
        assert!(
            bomb.len() < 20_000,
            "10 MiB of zeros compress to {} bytes",
            bomb.len()
        );
        assert!(matches!(
            inflate(&bomb, 64 * 1024),
            Err(InflateError::TooLarge { max: 65_536 })
        ));
        assert_eq!(inflate(&bomb, 10 << 20).unwrap().len(), 10 << 20);
    }

    #[test]
    fn garbage_is_corrupt() {
        assert!(matches!(
            inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt(_))
        ));
    }
}
