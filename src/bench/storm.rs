//! The storm scenario: many durable clients reconnect at once after a gateway restart,
//! each owed the records produced while it was down. Centrifugo, with history and
//! recovery on, is measured on the same load: its clients drop while records are
//! published, then all reconnect at once and recover them.

use std::time::{Duration, Instant};

use super::centrifugo::{Centrifugo, Mode, Recovering};
use super::{GatewayProc, Row, durable, produce, produce_with, progress, read_and_ack};
use kgate::kafka::producer::Producer;

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
    let (topic, peer_topic) = ("bench-resume", "bench-resume-centrifugo");
    let mut gw = GatewayProc::start(
        &dir.path().join("gw"),
        &bootstrap,
        &[(topic, 3), (peer_topic, 1)],
        "",
    )?;
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
    let scenario = format!("storm ({} clients)", opts.clients);
    let mut rows = vec![
        Row {
            scenario: scenario.clone(),
            metric: format!("time until all got {} missed records", opts.missed),
            value: elapsed * 1000.0,
            unit: "ms".into(),
            ratio: None,
        },
        Row {
            scenario: scenario.clone(),
            metric: "records delivered during the resume".into(),
            value: (opts.clients * opts.missed) as f64 / elapsed,
            unit: "records/s".into(),
            ratio: None,
        },
    ];
    gw.stop();
    if let Some(centrifugo) = Centrifugo::start_if_installed(
        &dir.path().join("centrifugo"),
        &bootstrap,
        peer_topic,
        Mode::History,
    )? {
        let peer = centrifugo_storm(&centrifugo, &producer, peer_topic, opts).await?;
        rows.push(Row {
            scenario,
            metric: format!(
                "peer: Centrifugo {} with history and recovery: time until all recovered {} missed records (it stays up; its history is in memory)",
                super::centrifugo::VERSION,
                opts.missed
            ),
            value: peer.as_secs_f64() * 1000.0,
            unit: "ms".into(),
            ratio: Some(elapsed / peer.as_secs_f64()),
        });
    }
    Ok(rows)
}

/// Centrifugo's version of the storm: every client drops while `missed` records are
/// published, then all reconnect at once and recover them from its history.
async fn centrifugo_storm(
    centrifugo: &Centrifugo,
    producer: &Producer,
    topic: &str,
    opts: &StormOptions,
) -> anyhow::Result<Duration> {
    let headers = Some(super::centrifugo::headers());
    centrifugo.wait_consuming(producer, topic).await?;
    let url = centrifugo.ws_url();
    progress(format!(
        "Centrifugo: connecting {} clients with recovery",
        opts.clients
    ));
    let mut clients = Vec::with_capacity(opts.clients);
    for chunk in (0..opts.clients).collect::<Vec<_>>().chunks(200) {
        let connects = chunk.iter().map(|_| Recovering::connect(&url, None));
        for c in futures_util::future::join_all(connects).await {
            clients.push(c?.0);
        }
    }
    produce_with(producer, topic, 100, headers.clone()).await?;
    for r in futures_util::future::join_all(clients.iter_mut().map(|c| c.read(100))).await {
        r?;
    }
    let positions: Vec<_> = clients.iter().map(Recovering::position).collect();
    drop(clients);
    // A witness stays connected to see when Centrifugo has all the missed records.
    let (mut witness, _) = Recovering::connect(&url, None).await?;
    produce_with(producer, topic, opts.missed, headers).await?;
    witness.read(opts.missed).await?;
    progress(format!(
        "Centrifugo: {} clients reconnect at once",
        opts.clients
    ));
    let started = Instant::now();
    let missed = opts.missed;
    let resumes: Vec<_> = positions
        .into_iter()
        .map(|since| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut c, recovered) = Recovering::connect(&url, Some(since)).await?;
                c.read(missed.saturating_sub(recovered)).await
            })
        })
        .collect();
    for r in resumes {
        r.await??;
    }
    Ok(started.elapsed())
}
