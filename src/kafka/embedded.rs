//! The embedded development broker: tansu, in-process, with sqlite storage
//! under the data directory. Used when `kafka.bootstrap_servers` is empty.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tansu_broker::broker::Broker;
use tansu_broker::coordinator::group::administrator::Controller;
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;
use url::Url;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    #[error("cannot create the broker directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the storage URL for {path}")]
    Url { path: PathBuf },
    #[error(
        "cannot start the embedded broker on {addr}: {source}. Set embedded_broker.listen \
         (KGATE_EMBEDDED_BROKER__LISTEN) to a free address, or kafka.bootstrap_servers to use \
         the broker already there"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded broker failed to start: {0}")]
    Build(String),
    #[error("embedded broker on {addr} stopped while starting (see the error above)")]
    Stopped { addr: SocketAddr },
    #[error("embedded broker did not accept connections on {addr} within {secs}s")]
    NotListening { addr: SocketAddr, secs: u64 },
}

type TansuBroker = Broker<Controller<StorageContainer>, StorageContainer>;

/// A running in-process broker; aborted when dropped.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    db_path: PathBuf,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts tansu on `listen` with its sqlite file in `<data_dir>/broker/`.
    pub async fn start(
        listen: SocketAddr,
        data_dir: &Path,
        retention_check: Duration,
    ) -> Result<Self, EmbeddedBrokerError> {
        let dir = data_dir.join("broker");
        std::fs::create_dir_all(&dir).map_err(|source| EmbeddedBrokerError::Dir {
            path: dir.clone(),
            source,
        })?;
        let dir = dir
            .canonicalize()
            .map_err(|source| EmbeddedBrokerError::Dir {
                path: dir.clone(),
                source,
            })?;
        // tansu only logs a failed bind, and whatever else answers on the port would then be
        // taken for it: check that the address is free first.
        drop(
            std::net::TcpListener::bind(listen).map_err(|source| EmbeddedBrokerError::Bind {
                addr: listen,
                source,
            })?,
        );
        let db_path = dir.join("tansu.db");
        let storage = storage_url(&db_path, retention_check)?;
        let endpoint =
            Url::parse(&format!("tcp://{listen}")).map_err(|_| EmbeddedBrokerError::Url {
                path: db_path.clone(),
            })?;

        let mut broker = TansuBroker::builder()
            .node_id(tansu_broker::NODE_ID)
            .cluster_id("kgate-dev")
            .incarnation_id(uuid::Uuid::new_v4())
            .advertised_listener(endpoint.clone())
            .storage(storage)
            .listener(endpoint)
            .silent(true)
            .build()
            .await
            .map_err(|e| EmbeddedBrokerError::Build(format!("{e:?}")))?;
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                tracing::error!(error = ?e, "embedded broker stopped");
            }
        });
        wait_listening(listen, &task, Duration::from_secs(10)).await?;
        Ok(EmbeddedBroker {
            addr: listen,
            db_path,
            task,
        })
    }

    /// The address clients bootstrap from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The sqlite file holding the broker's data.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// tansu joins the URL's path onto its working directory; a path that stays
/// absolute after it strips one leading `/` makes that join yield the path itself.
fn storage_url(db_path: &Path, retention_check: Duration) -> Result<Url, EmbeddedBrokerError> {
    let text = db_path.to_str().ok_or_else(|| EmbeddedBrokerError::Url {
        path: db_path.to_path_buf(),
    })?;
    let secs = retention_check.as_secs().max(1);
    Url::parse(&format!("sqlite:///{text}?maintenance_interval={secs}s")).map_err(|_| {
        EmbeddedBrokerError::Url {
            path: db_path.to_path_buf(),
        }
    })
}

async fn wait_listening(
    addr: SocketAddr,
    task: &JoinHandle<()>,
    limit: Duration,
) -> Result<(), EmbeddedBrokerError> {
    let deadline = Instant::now() + limit;
    loop {
        if task.is_finished() {
            return Err(EmbeddedBrokerError::Stopped { addr });
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(EmbeddedBrokerError::NotListening {
                addr,
                secs: limit.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_path_survives_tansus_join() {
        // Mirrors tansu-storage's lite engine: cwd + domain + path without one leading '/'.
        let url = storage_url(
            Path::new("/var/lib/kgate/broker/tansu.db"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(url.query(), Some("maintenance_interval=5s"));
        let mut joined = PathBuf::from("/somewhere/else");
        if let Some(domain) = url.domain() {
            joined.push(domain);
        }
        joined.push(url.path().strip_prefix('/').unwrap_or(url.path()));
        assert_eq!(joined, Path::new("/var/lib/kgate/broker/tansu.db"));
    }
}
