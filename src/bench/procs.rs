//! Processes a benchmark runs: a broker and gateways, each a child `kgate`
//! process killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], env: &[(&str, String)], log: PathBuf) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("cannot find the kgate executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::command(cmd, log)
    }

    /// Starts `cmd` with stdin piped (children exit on its EOF), stdout discarded, stderr to `log`.
    pub fn command(mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::null());
        Self::start(cmd, log)
    }

    /// [`Proc::command`], keeping the child's stdout to read.
    pub fn piped(mut cmd: Command, log: PathBuf) -> anyhow::Result<(Proc, ChildStdout)> {
        cmd.stdout(Stdio::piped());
        let mut proc = Self::start(cmd, log)?;
        let stdout = proc.child.stdout.take().context("child has no stdout")?;
        Ok((proc, stdout))
    }

    fn start(mut cmd: Command, log: PathBuf) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        cmd.stdin(Stdio::piped()).stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        Ok(Proc { child, log })
    }

    /// Sends SIGTERM and waits up to 30 s for the exit.
    pub fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }

    /// The child's stdin, to write to (the child exits once it is dropped).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the child's stderr goes.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid` and its direct children, in bytes (from /proc).
pub fn tree_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let mut total = rss_bytes(pid)?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let child = entry.file_name().to_str().and_then(|s| s.parse().ok());
        if let (Some(child), true) = (child, ppid == Some(pid)) {
            total += rss_bytes(child)?;
        }
    }
    Ok(total)
}

/// Resident memory of process `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn wait_tcp(addr: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{addr} did not accept connections within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The broker a bench runs against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Apache Kafka, run by the script at this path (`tests/kafka/kafka` in the repository).
    Kafka(PathBuf),
    /// kgate's embedded development broker (tansu with sqlite).
    Tansu,
}

static BROKER: std::sync::OnceLock<BrokerChoice> = std::sync::OnceLock::new();

/// Chooses the broker every scenario of this process starts (once, before any runs).
pub fn choose_broker(choice: BrokerChoice) {
    let _ = BROKER.set(choice);
}

/// The fetch wait of the bench's gateways and Kafka clients: Kafka answers a fetch as soon
/// as records arrive, so its default serves; tansu holds every fetch for the whole wait.
pub fn fetch_wait_max_ms() -> u32 {
    match BROKER.get() {
        Some(BrokerChoice::Tansu) => 5,
        _ => kgate::config::Config::default().kafka.fetch_wait_max_ms,
    }
}

/// A started broker: its process (CPU is measured on it) and bootstrap address.
pub struct Broker {
    pub proc: Proc,
    pub kind: &'static str,
}

/// Starts the chosen broker (Apache Kafka unless [`choose_broker`] said otherwise) on a
/// free port with its data in `dir`; returns it and its bootstrap address.
pub fn broker(dir: &Path) -> anyhow::Result<(Broker, String)> {
    let default = BrokerChoice::Kafka(PathBuf::from("tests/kafka/kafka"));
    match BROKER.get().unwrap_or(&default) {
        BrokerChoice::Tansu => {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let data = dir.display().to_string();
            let args = [
                "broker",
                "--listen",
                &addr,
                "--data-dir",
                &data,
                "--exit-on-stdin-eof",
            ];
            let proc = Proc::spawn(&args, &[], dir.join("broker.log"))?;
            wait_tcp(&addr, Duration::from_secs(30))?;
            Ok((
                Broker {
                    proc,
                    kind: "tansu",
                },
                addr,
            ))
        }
        BrokerChoice::Kafka(script) => {
            if !script.exists() {
                bail!(
                    "{} not found: benches start Apache Kafka with the repository's script \
                     (run from the repository root, or pass --broker tansu)",
                    script.display()
                );
            }
            // The controller listens on the next port.
            let port = loop {
                let port = free_port()?;
                if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                    break port;
                }
            };
            let mut cmd = Command::new(script);
            cmd.arg("run")
                .arg(port.to_string())
                .arg(dir.join("kafka"))
                .arg("--exit-on-stdin-eof");
            let log = dir.join("kafka.log");
            let proc = Proc::command(cmd, log.clone())?;
            let deadline = Instant::now() + Duration::from_secs(120);
            super::progress(format!("starting Apache Kafka on 127.0.0.1:{port}"));
            while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Kafka Server started")) {
                if Instant::now() > deadline {
                    bail!("Kafka did not start within 120 s; see {}", log.display());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok((
                Broker {
                    proc,
                    kind: "kafka",
                },
                format!("127.0.0.1:{port}"),
            ))
        }
    }
}

/// CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // After the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        bail!("unexpected /proc/{pid}/stat: {stat}");
    };
    // SAFETY: sysconf reads a constant of the running system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros((user + system) * 1_000_000 / per_sec))
}

/// Measures the CPU processes use over an interval.
pub struct CpuMeter {
    start: Vec<(u32, Duration)>,
}

impl CpuMeter {
    /// Starts measuring `pids`.
    pub fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            start: pids
                .iter()
                .map(|p| (*p, cpu_time(*p).unwrap_or_default()))
                .collect(),
        }
    }

    /// CPU used by each process since [`CpuMeter::start`], in the same order.
    pub fn used(&self) -> Vec<Duration> {
        self.start
            .iter()
            .map(|(pid, at)| cpu_time(*pid).unwrap_or_default().saturating_sub(*at))
            .collect()
    }
}

/// A gateway process and its configuration directory.
pub struct GatewayProc {
    pub proc: Proc,
    pub port: u16,
    dir: PathBuf,
    starts: u32,
}

impl GatewayProc {
    /// Writes a config serving `topics` from `bootstrap` (plus `extra` TOML) and starts the gateway.
    pub fn start(
        dir: &Path,
        bootstrap: &str,
        topics: &[(&str, i32)],
        extra: &str,
    ) -> anyhow::Result<GatewayProc> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[kafka]\nbootstrap_servers = \"{bootstrap}\"\nfetch_wait_max_ms = {}\ncreate_missing_topics = true\n\n[log]\nlevel = \"warn\"\n\n",
            dir.join("data").display(),
            fetch_wait_max_ms(),
        );
        for (name, partitions) in topics {
            toml.push_str(&format!(
                "[[topics]]\nname = \"{name}\"\npartitions = {partitions}\n\n"
            ));
        }
        toml.push_str(extra);
        toml.push_str("\n[auth]\nmode = \"none\"\n");
        // The load clients all connect from one address.
        toml.push_str("\n[limits]\nconnection_attempts_per_ip_per_sec = 1000000\nconnection_attempts_burst = 1000000\nmax_connections_per_identity = 1000000\n");
        std::fs::write(dir.join("kgate.toml"), toml)?;
        let mut gw = GatewayProc {
            proc: Self::spawn(dir, 0)?,
            port,
            dir: dir.to_path_buf(),
            starts: 0,
        };
        gw.wait_ready()?;
        Ok(gw)
    }

    fn spawn(dir: &Path, n: u32) -> anyhow::Result<Proc> {
        let config = dir.join("kgate.toml").display().to_string();
        Proc::spawn(
            &["serve", "--config", &config, "--exit-on-stdin-eof"],
            &[],
            dir.join(format!("gateway-{n}.log")),
        )
    }

    /// Stops with SIGTERM.
    pub fn stop(&mut self) {
        self.proc.terminate();
    }

    /// Starts a stopped gateway again on the same port and data.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        self.proc = Self::spawn(&self.dir, self.starts)?;
        self.wait_ready()
    }

    /// Waits until `/readyz` answers 200.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ureq::get(&url).call().is_ok_and(|r| r.status() == 200) {
            if Instant::now() > deadline {
                bail!(
                    "gateway not ready within 60 s; see {}",
                    self.proc.log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }
}
