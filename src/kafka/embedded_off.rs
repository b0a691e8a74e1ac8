//! The embedded development broker in a build without it (cargo feature
//! `embedded-broker` off): the same interface, and starting it says how to get one.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    #[error(
        "this kgate was built without the embedded broker (cargo feature `embedded-broker`): \
         set kafka.bootstrap_servers to a Kafka cluster, or build with the default features"
    )]
    NotBuilt,
}

/// Never made: [`EmbeddedBroker::start`] always fails in this build.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Fails: this build has no embedded broker.
    pub async fn start(
        _listen: SocketAddr,
        _data_dir: &Path,
        _retention_check: Duration,
    ) -> Result<Self, EmbeddedBrokerError> {
        Err(EmbeddedBrokerError::NotBuilt)
    }

    /// The address clients bootstrap from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sqlite file holding the broker's data (none in this build).
    pub fn db_path(&self) -> &Path {
        Path::new("")
    }
}
