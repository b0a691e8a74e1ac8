//! The baselines kgate is measured against with the same load client: a
//! Kafka-to-WebSocket bridge in Node.js (kafkajs + ws, benches/baseline/) and
//! nchan, the nginx pub/sub module, fed by HTTP POST.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::procs::{Proc, free_port, wait_tcp};
use super::{bench_record, progress};

/// Where the bridge lives, relative to the repository root (override with KGATE_BASELINE_DIR).
const BRIDGE_DIR: &str = "benches/baseline";
/// Debian's path of the nchan module (package libnginx-mod-nchan).
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// The kafkajs + ws bridge, running.
pub struct Bridge {
    _proc: Proc,
    port: u16,
}

impl Bridge {
    /// Why the bridge cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        let dir = bridge_dir();
        if !dir.join("node_modules/kafkajs").is_dir() {
            return Some(format!(
                "{}/node_modules is missing (run `npm ci` there, or benches/run)",
                dir.display()
            ));
        }
        Command::new("node")
            .arg("--version")
            .output()
            .is_err()
            .then(|| "node is not installed".to_string())
    }

    /// Starts the bridge reading `topic` from its beginning.
    pub fn start(dir: &Path, bootstrap: &str, topic: &str) -> anyhow::Result<Bridge> {
        let port = free_port()?;
        let mut cmd = Command::new("node");
        cmd.arg(bridge_dir().join("bridge.js"))
            .env("BROKERS", bootstrap)
            .env("TOPIC", topic)
            .env("PORT", port.to_string());
        let proc = Proc::command(cmd, dir.join("bridge.log"))?;
        wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(60)).with_context(|| {
            format!(
                "the bridge did not start; see {}",
                dir.join("bridge.log").display()
            )
        })?;
        Ok(Bridge { _proc: proc, port })
    }

    /// The URL its clients connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }
}

fn bridge_dir() -> PathBuf {
    std::env::var_os("KGATE_BASELINE_DIR").map_or_else(|| PathBuf::from(BRIDGE_DIR), PathBuf::from)
}

/// nginx with nchan: one channel, WebSocket subscribers at `/sub`, publishers POST to `/pub`.
pub struct Nchan {
    pub proc: Proc,
    port: u16,
}

impl Nchan {
    /// Why nchan cannot run here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !Path::new(NCHAN_MODULE).exists() {
            return Some(format!(
                "{NCHAN_MODULE} is missing (apt-get install nginx libnginx-mod-nchan)"
            ));
        }
        Command::new("nginx")
            .arg("-v")
            .output()
            .is_err()
            .then(|| "nginx is not installed".to_string())
    }

    /// Writes a config into `dir` and starts nginx in the foreground.
    pub fn start(dir: &Path) -> anyhow::Result<Nchan> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            r#"load_module {NCHAN_MODULE};
worker_processes auto;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 19000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  nchan_shared_memory_size 512m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /pub {{
      nchan_publisher;
      nchan_channel_id bench;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 60s;
    }}
    location = /sub {{
      nchan_subscriber websocket;
      nchan_channel_id bench;
      nchan_subscriber_first_message newest;
    }}
  }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]);
        let proc = Proc::command(cmd, dir.join("nginx.stderr"))?;
        wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).with_context(|| {
            format!(
                "nginx did not start; see {}",
                dir.join("error.log").display()
            )
        })?;
        Ok(Nchan { proc, port })
    }

    /// The URL its subscribers connect to.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/sub", self.port)
    }

    /// POSTs `n` bench records from `publishers` threads, each on one keep-alive connection.
    pub async fn publish(&self, n: usize, publishers: usize) -> anyhow::Result<Duration> {
        let url = format!("http://127.0.0.1:{}/pub", self.port);
        let started = Instant::now();
        let threads: Vec<_> = (0..publishers)
            .map(|t| {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into();
                    for i in (t..n).step_by(publishers) {
                        let (_, body) = bench_record(i, super::load::now_us());
                        let resp = agent
                            .post(&url)
                            .content_type("application/json")
                            .send(body.as_bytes())
                            .with_context(|| format!("POST {url}"))?;
                        if !resp.status().is_success() {
                            bail!("POST {url} answered {}", resp.status());
                        }
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in threads {
            t.await??;
        }
        progress(format!("published {n} records to nchan"));
        Ok(started.elapsed())
    }
}
