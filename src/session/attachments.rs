//! Which connection holds each durable session, and the signal that takes it away
//! (a second attach of the same session, or the session's deletion), given through the
//! connection's outbox: the one wake-up every connection already waits on.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::router::outbox::Outbox;

/// Sessions attached to a connection: connection id and its outbox.
#[derive(Default)]
pub struct Attachments {
    attached: Mutex<HashMap<String, (u64, Arc<Outbox>)>>,
}

impl Attachments {
    /// Attaches `session` to connection `conn`; a connection holding it already is told to close.
    pub fn attach(&self, session: &str, conn: u64, outbox: Arc<Outbox>) {
        if let Some((_, previous)) = self
            .attached
            .lock()
            .insert(session.to_string(), (conn, outbox))
        {
            previous.take_over();
        }
    }

    /// Detaches `session` if connection `conn` still holds it.
    pub fn detach(&self, session: &str, conn: u64) {
        let mut attached = self.attached.lock();
        if attached.get(session).is_some_and(|(c, _)| *c == conn) {
            attached.remove(session);
        }
    }

    /// True while a connection holds `session`.
    pub fn is_attached(&self, session: &str) -> bool {
        self.attached.lock().contains_key(session)
    }

    /// Closes the connection holding `session`, if any (before the session is deleted).
    pub fn kick(&self, session: &str) {
        if let Some((_, outbox)) = self.attached.lock().remove(session) {
            outbox.take_over();
        }
    }
}
