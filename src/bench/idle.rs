//! The idle scenario: N idle WebSocket connections, each subscribed to a quiet
//! channel, held by several load processes on different loopback addresses
//! (a process may open only so many files); the figure is the growth of the
//! gateway's resident memory per connection. The baseline is nchan holding
//! the same connections.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::baseline::Nchan;
use super::centrifugo::{Centrifugo, Mode};
use super::load::{Connect, Target, connect_many};
use super::procs::{Proc, rss_bytes, tree_rss_bytes};
use super::{GatewayProc, Row, progress};

/// Options of the idle scenario.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// Idle connections.
    pub clients: usize,
    /// Load processes holding them (each from its own 127.0.0.x).
    pub processes: usize,
    /// The connections negotiate permessage-deflate.
    pub deflate: bool,
}

/// Runs the scenario; returns the summary rows.
pub async fn run_idle(opts: &IdleOptions) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (_broker, bootstrap) = super::procs::broker(dir.path())?;
    let topic = "bench-idle";
    let gw = GatewayProc::start(&dir.path().join("gw"), &bootstrap, &[(topic, 1)], "")?;
    let target = Target::kgate(&gw.ws_url(), topic);
    // One connection first, so one-off allocations (first subscriber of a topic) are not counted.
    drop(connect_many(&target, 1, Connect::default()).await?);
    let kgate = measure(dir.path(), &target, opts, || rss_bytes(gw.proc.pid())).await?;
    let scenario = format!("idle ({} connections)", opts.clients);
    let mut rows = vec![Row {
        scenario: scenario.clone(),
        metric: "kgate RSS per idle subscribed connection".into(),
        value: kgate,
        unit: "bytes".into(),
        ratio: None,
    }];
    let peer_dir = dir.path().join("centrifugo");
    if let Some(centrifugo) =
        Centrifugo::start_if_installed(&peer_dir, &bootstrap, topic, Mode::Idle)?
    {
        let pid = centrifugo.proc.pid();
        drop(connect_many(&centrifugo.target(), 1, Connect::default()).await?);
        let bytes = measure(&peer_dir, &centrifugo.target(), opts, || rss_bytes(pid)).await?;
        rows.push(Row {
            scenario: scenario.clone(),
            metric: format!(
                "peer: Centrifugo {} RSS per idle subscribed connection",
                super::centrifugo::VERSION
            ),
            value: bytes,
            unit: "bytes".into(),
            ratio: Some(kgate / bytes),
        });
    }
    match Nchan::unavailable() {
        Some(why) => progress(format!("skipping the nchan baseline: {why}")),
        None => {
            let nchan = Nchan::start(&dir.path().join("nchan"))?;
            let target = Target::Plain {
                url: nchan.ws_url(),
            };
            let pid = nchan.proc.pid();
            let bytes = measure(dir.path(), &target, opts, || tree_rss_bytes(pid)).await?;
            rows.push(Row {
                scenario,
                metric: "baseline: nchan RSS per idle subscriber (all workers)".into(),
                value: bytes,
                unit: "bytes".into(),
                ratio: Some(kgate / bytes),
            });
        }
    }
    Ok(rows)
}

/// Growth of `rss` per connection while `opts.clients` connections to `target` are held.
pub(super) async fn measure(
    dir: &std::path::Path,
    target: &Target,
    opts: &IdleOptions,
    rss: impl Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss()?;
    let holders = hold(dir, target, opts).await?;
    // Let the server finish the handshakes' work and return transient buffers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss()?;
    drop(holders);
    let per = after.saturating_sub(before) as f64 / opts.clients as f64;
    progress(format!(
        "{}: RSS {:.1} MiB before, {:.1} MiB with {} connections: {per:.0} bytes each",
        target_name(target),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        opts.clients
    ));
    Ok(per)
}

fn target_name(target: &Target) -> &'static str {
    match target {
        Target::Kgate { .. } => "kgate",
        Target::Centrifugo { .. } => "Centrifugo",
        Target::Plain { .. } => "baseline",
        Target::Mqtt { .. } => "kgate MQTT",
    }
}

/// Starts `processes` children of `kgate bench hold` sharing `clients` connections; returns
/// once every child holds its share. The connections close when the children are dropped.
async fn hold(
    dir: &std::path::Path,
    target: &Target,
    opts: &IdleOptions,
) -> anyhow::Result<Vec<Proc>> {
    let (clients, processes) = (opts.clients, opts.processes.max(1));
    let exe = std::env::current_exe().context("cannot find the kgate executable")?;
    let (url, channel, centrifugo) = match target {
        Target::Kgate { url, channels } => (url, channels.first().cloned(), false),
        Target::Centrifugo { url, channel } => (url, Some(channel.clone()), true),
        Target::Plain { url } => (url, None, false),
        Target::Mqtt { url, filter, .. } => (url, Some(filter.clone()), false),
    };
    let mut children = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..processes {
        let share = clients / processes + usize::from(i < clients % processes);
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "hold", "--url", url, "--clients"])
            .arg(share.to_string())
            .arg("--bind")
            .arg(format!("127.0.0.{}", 2 + i));
        if let Some(channel) = &channel {
            cmd.args(["--channel", channel]);
        }
        if centrifugo {
            cmd.arg("--centrifugo");
        }
        if opts.deflate {
            cmd.arg("--deflate");
        }
        let (proc, stdout) = Proc::piped(cmd, dir.join(format!("hold-{i}.log")))?;
        children.push(proc);
        outputs.push(stdout);
    }
    let lines = tokio::task::spawn_blocking(move || {
        outputs
            .into_iter()
            .map(|out| {
                let mut line = String::new();
                BufReader::new(out).read_line(&mut line).map(|_| line)
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with("holding") {
            bail!(
                "load process {i} failed; see {}",
                children[i].log().display()
            );
        }
    }
    Ok(children)
}

/// The `kgate bench hold` child: connects `clients` from `bind`, says `holding N` on
/// stdout, and keeps the connections open until stdin closes.
pub async fn run_hold(
    url: &str,
    channel: Option<&str>,
    centrifugo: bool,
    clients: usize,
    how: Connect,
) -> anyhow::Result<()> {
    let target = match (channel, centrifugo) {
        (Some(channel), true) => Target::Centrifugo {
            url: url.to_string(),
            channel: channel.to_string(),
        },
        (Some(filter), false) if url.starts_with("mqtt://") => Target::Mqtt {
            url: url.to_string(),
            filter: filter.to_string(),
            qos: 0,
        },
        (Some(channel), false) => Target::kgate(url, channel),
        (None, _) => Target::Plain {
            url: url.to_string(),
        },
    };
    let held = connect_many(&target, clients, how).await?;
    println!("holding {}", held.len());
    // Children exit when the parent closes stdin (or dies).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await? > 0 {}
    drop(held);
    Ok(())
}
