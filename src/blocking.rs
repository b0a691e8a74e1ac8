//! Named pools of threads for blocking work (RocksDB, Kafka replay reads and
//! lookups). Each kind of work has its own pool, bounded in threads, so none queues
//! behind another and none runs on tokio's async workers.

use std::sync::{Arc, mpsc};

use parking_lot::Mutex;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The pool's threads are gone (a job panicked in each, or the pool was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {0} threads have stopped")]
pub struct Stopped(pub &'static str);

/// A fixed set of threads running jobs in the order they were queued; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    name: &'static str,
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    /// Starts `threads` threads named `kgate-{name}-N`; they end when the last clone is dropped.
    pub fn start(name: &'static str, threads: usize) -> std::io::Result<Pool> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("kgate-{name}-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue at a time; the others wait for the lock.
                        let job = queue.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Pool { name, jobs })
    }

    /// Queues `f` without waiting for it.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), Stopped> {
        self.jobs.send(Box::new(f)).map_err(|_| Stopped(self.name))
    }

    /// Runs `f` on the pool and waits for its answer.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(f());
        })?;
        // A job that panicked drops its sender (and its thread).
        rx.await.map_err(|_| Stopped(self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pools_own_threads() {
        let pool = Pool::start("test", 2).expect("threads");
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .expect("answer");
        assert!(name.is_some_and(|n| n.starts_with("kgate-test-")));
        // A panicking job is reported, and the pool goes on with its other thread.
        assert_eq!(
            pool.run(|| panic!("boom")).await,
            Err::<(), _>(Stopped("test"))
        );
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }
}
