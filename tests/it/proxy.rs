//! Issue 6: docker/nginx.conf in front of the gateway (Debian's nginx): WebSocket and
//! SSE stream through it, and SSE events are not held back by proxy buffering.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::*;
use crate::http_transports::{offsets, produce, read_sse};

/// Debian's nginx running `docker/nginx.conf` with the upstream set to `gateway_port`.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, gateway_port: u16) -> Nginx {
        let port = free_port();
        let conf = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/nginx.conf"),
        )
        .expect("docker/nginx.conf");
        let d = dir.display();
        let rewritten = conf
            .replace("server kgate:8080;", &format!("server 127.0.0.1:{gateway_port};"))
            // One gateway here: the other nodes' names do not resolve outside compose.
            .replace("server kgate-b:8080;", "")
            .replace("server kgate-c:8080;", "")
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace(
                "http {",
                &format!(
                    "http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                     fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
                ),
            );
        assert_ne!(
            conf, rewritten,
            "docker/nginx.conf has the expected upstream and listen lines"
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, rewritten).expect("write nginx.conf");
        // Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
        let bin = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|b| Path::new(b).exists())
            .unwrap_or("nginx");
        // Its own process group: stopping it reaches the workers too, even if the master died.
        let child = Command::new(bin)
            .process_group(0)
            .args(["-p", &d.to_string(), "-c", &file.display().to_string()])
            .args([
                "-g",
                &format!("daemon off; pid {d}/nginx.pid; error_log {d}/error.log;"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (install it with .ci/setup-tests)");
        wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(20));
        Nginx { child, port }
    }
}

impl Nginx {
    /// The worker processes of this nginx (children of its master).
    fn workers(&self) -> Vec<u32> {
        let master = self.child.id();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        procs
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                        == Some(master)
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    /// nginx's own graceful stop (SIGQUIT: the master ends its workers, then itself); the
    /// whole process group is killed if that takes longer than 10 s. SIGKILL on the master
    /// alone would orphan the workers.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill only sends a signal, to the nginx this struct started.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                // Not `kill -KILL -PID`: procps reads "-PID" as options and sent
                // kill(-1, SIGKILL), which ended every process of the machine (CI's too).
                // SAFETY: killpg only sends a signal; the group is nginx's own (process_group(0)).
                unsafe { libc::killpg(pid, libc::SIGKILL) };
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_sse_stream_through_nginx() {
    let t = topic("proxied");
    let gw = Gateway::start(&[(&t, 1)], "");
    let dir = tempfile::tempdir().expect("temp dir");
    let nginx = Nginx::start(dir.path(), gw.port);

    // WebSocket through the proxy.
    let mut ws = subscribed_client(
        &format!("ws://127.0.0.1:{}/v1/ws", nginx.port),
        &t,
        json!("latest"),
    )
    .await;
    produce(&t, 0..200).await;
    let got = read_offsets(&mut ws, 200, Duration::from_secs(60)).await;
    assert_eq!(
        got[&0],
        (0..200).collect::<Vec<i64>>(),
        "every record through nginx, in order"
    );

    // SSE through the proxy: each record must arrive before the next is produced, so a
    // buffering proxy (holding small events until a buffer fills) would fail this.
    let url = format!("http://127.0.0.1:{}/v1/sse?channel={t}", nginx.port);
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let reader = tokio::task::spawn_blocking(move || {
        let mut last = 0;
        read_sse(&url, None, move |m| {
            let n = offsets(m).len();
            if n != last || m.iter().any(|x| x.data["type"] == "live") && last == 0 {
                last = n;
                let _ = tx.send(n);
            }
            n >= 5
        })
    });
    let wait = |want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(n) if n >= want => return,
                _ if std::time::Instant::now() > deadline => {
                    panic!("SSE event {want} did not come through nginx in time: buffered?")
                }
                _ => {}
            }
        }
    };
    wait(0); // subscribed and live
    for i in 0..5i64 {
        produce(&t, 200 + i..201 + i).await;
        wait(i as usize + 1);
    }
    let (messages, headers, _) = reader.await.expect("SSE reader");
    assert_eq!(offsets(&messages), (200..205).collect::<Vec<i64>>());
    assert_eq!(headers["content-type"], "text/event-stream");

    // Clients gone first: nginx's graceful stop waits for open connections.
    drop(ws);
    // Stopping nginx stops its workers too: CI runs again on the same machine (issue 16.10).
    // When stopping returns, nothing it started is left (zombies awaiting reaping aside).
    let workers = nginx.workers();
    assert!(!workers.is_empty(), "nginx has worker processes");
    drop(nginx);
    let alive = |pid: &&u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    let left: Vec<&u32> = workers.iter().filter(alive).collect();
    assert!(
        left.is_empty(),
        "nginx workers {left:?} outlived their master"
    );
}
