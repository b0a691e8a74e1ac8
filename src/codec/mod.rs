//! Record decoding (JSON pass-through, raw bytes, Avro by schema file or schema
//! registry) and outgoing frame encoding.
//!
//! A record is decoded and encoded into its event frame once, at ingest; every
//! recipient then shares the same [`Frame`] buffer (and its compressed form, [`deflate`]).

pub mod avro;
pub mod cursor;
pub mod deflate;
pub mod delta;
pub mod depth;
mod envelope;
mod event;
pub mod payload;
pub mod registry;

pub use envelope::{ENVELOPE_SCHEMA, encode_envelope};
pub use event::{Bare, EncodedRecord, Frame, Payload, RecordMeta, encode_event, skipped_frame};
pub use payload::{Data, DecodeError, Decoded, TopicCodec};
pub use registry::Registry;
