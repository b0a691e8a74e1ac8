//! The storm scenario: many durable clients reconnect at once after a gateway restart.

use std::time::Instant;

use super::{GatewayProc, Row, durable, produce, progress, read_and_ack};
use crate::kafka::producer::Producer;

/// Options of the storm scenario.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub clients: usize,
    /// Records each client missed while the gateway was down.
    pub missed: usize,
}

/// Runs the scenario; returns the summary rows.
pub async fn run_storm(opts: &StormOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let topic = "bench-resume";
    let mut gw = GatewayProc::start(&dir.path().join("gw"), &bootstrap, &[(topic, 3)], "")?;
    let config = super::kafka_config(&bootstrap);
    let producer = Producer::new(&config)?;
    let url = gw.ws_url();
    progress(format!("connecting {} durable clients", opts.clients));
    let mut clients = Vec::with_capacity(opts.clients);
    for chunk in (0..opts.clients).collect::<Vec<_>>().chunks(200) {
        let connects = chunk.iter().map(|i| {
            let url = url.clone();
            async move { durable(&url, &format!("bench-{i}"), topic, true).await }
        });
        for c in futures_util::future::join_all(connects).await {
            clients.push(c?);
        }
    }
    produce(&producer, topic, 100).await?;
    let reads = clients.iter_mut().map(|c| read_and_ack(c, topic, 100));
    for r in futures_util::future::join_all(reads).await {
        r?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(clients);
    progress("restarting the gateway while records are produced");
    gw.stop();
    produce(&producer, topic, opts.missed).await?;
    gw.start_again()?;
    progress(format!("{} clients reconnect at once", opts.clients));
    let started = Instant::now();
    // A task per client, so the load spreads over both cores as real clients would.
    let missed = opts.missed;
    let resumes: Vec<_> = (0..opts.clients)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut c = durable(&url, &format!("bench-{i}"), topic, false).await?;
                read_and_ack(&mut c, topic, missed).await
            })
        })
        .collect();
    for r in resumes {
        r.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(vec![
        Row {
            scenario: format!("storm ({} clients)", opts.clients),
            metric: format!("time until all got {} missed records", opts.missed),
            value: elapsed * 1000.0,
            unit: "ms".into(),
            ratio: None,
        },
        Row {
            scenario: format!("storm ({} clients)", opts.clients),
            metric: "records delivered during the resume".into(),
            value: (opts.clients * opts.missed) as f64 / elapsed,
            unit: "records/s".into(),
            ratio: None,
        },
    ])
}
