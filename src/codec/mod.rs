//! Record decoding (JSON pass-through, raw bytes) and outgoing frame encoding.
//!
//! A record is decoded and encoded into its event frame once, at ingest; every
//! recipient then shares the same [`Frame`] buffer.

pub mod cursor;
mod event;

pub use event::{EncodedRecord, Frame, RecordMeta, encode_event};
