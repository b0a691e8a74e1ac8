//! Issue 22: the JavaScript client as users get it: `npm pack` of clients/js, the
//! tarball installed into an app (tests/sdk, not a path link), its declarations checked
//! by compiling a typed use of the whole API, and a Node.js service streaming a channel
//! through a gateway SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Runs `program args` in `dir`; panics with its output unless it succeeds. Returns stdout.
fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} in {}: {stdout}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Packs clients/js and installs the tarball into tests/sdk (once per run: the tests
/// share the app); returns the app's directory.
fn install_packed() -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    INSTALLED.get_or_init(pack_and_install).clone()
}

fn pack_and_install() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = root.join("tests/sdk");
    assert!(
        app.join("node_modules/typescript").exists(),
        "typescript is not installed: run .ci/setup-tests (npm ci in tests/sdk)"
    );
    let packed = tempfile::tempdir().expect("temp dir");
    let dest = packed.path().to_string_lossy().into_owned();
    let out = run(
        &root.join("clients/js"),
        "npm",
        &["pack", "--pack-destination", &dest],
    );
    let tarball = packed.path().join(
        out.lines()
            .last()
            .expect("npm pack names the tarball")
            .trim(),
    );
    assert!(tarball.exists(), "npm pack wrote {}", tarball.display());
    eprintln!("npm pack: {}", tarball.display());
    let tarball = tarball.to_string_lossy().into_owned();
    run(
        &app,
        "npm",
        &[
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            &tarball,
        ],
    );
    let installed = app.join("node_modules/@kgate/client");
    assert!(
        installed.join("kgate.js").exists() && !installed.is_symlink(),
        "the tarball is installed as files, not linked"
    );
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packed_sdk_type_checks_and_streams_in_node_through_a_gateway_sigkill() {
    let app = install_packed();
    // The declarations cover the whole API: the typed example compiles, and the misuses it
    // marks with @ts-expect-error are errors.
    run(&app, "node_modules/.bin/tsc", &["--noEmit", "-p", "."]);
    // WebSocket (the `ws` package) with a durable session and acks; SSE over fetch and
    // long-polling with their cursors.
    for (transport, session) in [("websocket", "node-service"), ("sse", ""), ("poll", "")] {
        stream_through_sigkill(&app, transport, session).await;
    }
}

/// Runs tests/sdk/stream.mjs on `transport`; kills the gateway with SIGKILL halfway
/// through 300 records and restarts it; the service must end with every record.
async fn stream_through_sigkill(app: &Path, transport: &str, session: &str) {
    let t = topic(&format!("sdk-node-{transport}"));
    let mut gw = Gateway::start(&[(&t, 2)], "");
    let total = 300;
    let url = format!("http://127.0.0.1:{}", gw.port);
    let mut node = Command::new("node")
        .args([
            "stream.mjs",
            &url,
            &t,
            &total.to_string(),
            transport,
            session,
        ])
        .current_dir(app)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node (install it with .ci/setup-tests)");
    let stdout = node.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let received = |line: &str| {
        line.strip_prefix("received ")
            .and_then(|n| n.parse::<usize>().ok())
    };
    // Half the records, then SIGKILL while the service streams, then the rest.
    produce_paced_records(&t, 0..total / 2).await;
    loop {
        let line = next_line(&mut lines).await;
        if received(&line).is_some_and(|n| n >= 50) {
            break;
        }
    }
    gw.kill();
    produce_paced_records(&t, total / 2..total).await;
    gw.restart();
    let result = loop {
        let line = next_line(&mut lines).await;
        if line.starts_with('{') {
            break serde_json::from_str::<Value>(&line).expect("result JSON");
        }
    };
    assert!(node.wait().expect("node").success());
    assert_eq!(result["received"], total, "{transport}: {result}");
    assert!(
        result["reconnects"].as_u64() >= Some(1),
        "{transport}: {result}"
    );
    eprintln!(
        "Node service over {transport}: {} distinct records through a SIGKILL, {} reconnects",
        result["received"], result["reconnects"]
    );
}

/// The next line the Node service prints (within 60 s).
async fn next_line(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .expect("the Node service went quiet")
        .expect("the Node service ended early")
}

/// Produces records `range` (keyed by number, so both partitions get some).
async fn produce_paced_records(topic: &str, range: std::ops::Range<usize>) {
    let producer = producer();
    for i in range {
        let key = i.to_string();
        let value = format!(r#"{{"seq":{i}}}"#);
        producer
            .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), None)
            .await
            .expect("produce");
    }
}

fn sorted<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

/// Every option the client knows is declared in kgate.d.ts and documented in
/// clients/js/README.md, and neither names one the client does not know.
#[test]
fn every_option_is_declared_and_documented() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    let names = run(
        &js,
        "node",
        &[
            "-e",
            "console.log(Object.keys(new (require('./kgate.js').Client)({ url: 'http://x' }).options).join(' '))",
        ],
    );
    let known: Vec<&str> = names.split_whitespace().collect();
    assert!(known.len() > 15, "{names}");
    let declarations = std::fs::read_to_string(js.join("kgate.d.ts")).expect("kgate.d.ts");
    let options = declarations
        .split("export interface Options {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("interface Options");
    let declared: Vec<&str> = options
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(name, _)| name))
        .filter(|name| !name.starts_with('/') && !name.starts_with('*'))
        .collect();
    let readme = std::fs::read_to_string(js.join("README.md")).expect("README.md");
    let options_table = readme
        .split("## Options")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's Options section");
    let documented: Vec<&str> = options_table
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    assert_eq!(
        sorted(&declared),
        sorted(&known),
        "kgate.d.ts Options against kgate.js"
    );
    assert_eq!(
        sorted(&documented),
        sorted(&known),
        "README.md options against kgate.js"
    );
}

/// A page that imports the packed package, built with Vite and served by `vite preview`,
/// shows live records in chromium and resumes after a dropped connection.
#[test]
fn a_vite_built_page_imports_the_packed_sdk_in_chromium() {
    let app = install_packed();
    run(
        &app,
        "node_modules/.bin/vite",
        &["build", "--logLevel", "warn"],
    );
    let port = free_port();
    let log = tempfile::NamedTempFile::new().expect("log file");
    // Started from here, not from the app: the config names its own paths.
    let config = app.join("vite.config.js").to_string_lossy().into_owned();
    let _preview = Proc::spawn_program(
        &app.join("node_modules/.bin/vite").to_string_lossy(),
        &[
            "preview",
            "--config",
            &config,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--strictPort",
        ],
        &[],
        log.path(),
    );
    wait_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(30));
    let t = topic("sdk-vite");
    let gw = Gateway::start(&[(&t, 2)], "");
    let args = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://127.0.0.1:{}", gw.port),
        t,
    ];
    browser_checks("vite.mjs", &args, 3);
}
