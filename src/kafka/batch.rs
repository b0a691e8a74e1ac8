//! Reading a consumer's queue many messages per call: librdkafka's
//! `rd_kafka_consume_batch_queue`, which rust-rdkafka does not wrap. Its one-message
//! poll reads the clock about three times, takes the queue's lock and allocates an event
//! per message. With the batch call and hand-written event frames, Kafka-tier replays
//! cost the gateway 34% to 44% less CPU per record in paired runs (BENCHMARKS.md,
//! "Kafka reads in batches").
//!
//! Only for consumers whose events kgate does not need: the batch call serves errors and
//! statistics through callbacks, which rust-rdkafka does not set (it reads them as
//! events), so the ingest consumer, which reads statistics, keeps the one-message poll.

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::Consumed;

/// A consumer's queue, read a batch at a time; lives no longer than its consumer.
pub struct BatchReader<'c> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    slots: Vec<*mut rd::rd_kafka_message_t>,
    _consumer: PhantomData<&'c ()>,
}

impl<'c> BatchReader<'c> {
    /// Reads `consumer`'s queue (it needs a `group.id`), at most `size` messages per call.
    pub fn new<C: ConsumerContext>(
        consumer: &'c BaseConsumer<C>,
        size: usize,
    ) -> Result<BatchReader<'c>, KafkaError> {
        // SAFETY: the client is valid while `consumer` is borrowed, which outlives `self`.
        let queue = unsafe { rd::rd_kafka_queue_get_consumer(consumer.client().native_ptr()) };
        let queue = NonNull::new(queue).ok_or_else(|| {
            KafkaError::ClientCreation("the consumer has no consumer queue (no group.id)".into())
        })?;
        Ok(BatchReader {
            queue,
            slots: vec![std::ptr::null_mut(); size.max(1)],
            _consumer: PhantomData,
        })
    }

    /// Hands `each` the messages queued now, up to `max` (and the batch size), without
    /// waiting; returns how many there were. Errors, the end of a partition among them
    /// (`KafkaError::PartitionEOF`), come in order with the messages.
    pub fn drain(
        &mut self,
        max: usize,
        mut each: impl FnMut(Result<Consumed<'_>, KafkaError>),
    ) -> usize {
        let max = max.min(self.slots.len());
        // SAFETY: the queue is valid (see `new`); librdkafka fills at most `max` slots.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, self.slots.as_mut_ptr(), max)
        };
        // -1: the queue cannot be read now; the caller's blocking poll will say why.
        let taken = Taken(&self.slots[..n.clamp(0, max as isize) as usize]);
        for &message in taken.0 {
            // SAFETY: librdkafka returned it, and it is destroyed only after `each` returns.
            each(unsafe { consumed(message) });
        }
        taken.0.len()
    }
}

impl Drop for BatchReader<'_> {
    fn drop(&mut self) {
        // SAFETY: the reference taken in `new`, given back once.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Messages handed out by one batch call: destroyed when done with, even on a panic.
struct Taken<'s>(&'s [*mut rd::rd_kafka_message_t]);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for &message in self.0 {
            // SAFETY: each came from the batch call and is destroyed once, here.
            unsafe { rd::rd_kafka_message_destroy(message) };
        }
    }
}

/// Views a message librdkafka returned.
///
/// # Safety
/// `message` is a live message from librdkafka, not destroyed while the view is used.
unsafe fn consumed<'m>(message: *const rd::rd_kafka_message_t) -> Result<Consumed<'m>, KafkaError> {
    // SAFETY (all of it): `message` and what it points to live as long as the view (above).
    unsafe {
        let m = &*message;
        match m.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => {}
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                return Err(KafkaError::PartitionEOF(m.partition));
            }
            err => return Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(err))),
        }
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        let timestamp = rd::rd_kafka_message_timestamp(message, &mut kind);
        let mut headers = Vec::new();
        let mut native = std::ptr::null_mut();
        if rd::rd_kafka_message_headers(message, &mut native)
            == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            for idx in 0..rd::rd_kafka_header_cnt(native) {
                let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
                if rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    break;
                }
                // A header name that is not UTF-8 cannot be named in a JSON frame.
                if let Ok(name) = CStr::from_ptr(name).to_str() {
                    headers.push((name, bytes(value, size)));
                }
            }
        }
        Ok(Consumed {
            partition: m.partition,
            offset: m.offset,
            timestamp: (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
                .then_some(timestamp),
            key: bytes(m.key, m.key_len),
            payload: bytes(m.payload, m.len),
            headers,
        })
    }
}

/// A byte slice librdkafka points to; None for a null pointer (no key, a tombstone).
///
/// # Safety
/// `ptr` is null or points to `len` bytes that live for `'m`.
unsafe fn bytes<'m>(ptr: *const c_void, len: usize) -> Option<&'m [u8]> {
    // SAFETY: as promised by the caller.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}
