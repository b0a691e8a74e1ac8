//! Issue 6: the SDK and the demo page in a real browser (Debian's chromium, driven by
//! playwright-core from tests/browser/run.mjs): live data, resume after a cut
//! connection with no missing offset, fallback to SSE and to long-polling, a board opened
//! mid-session from a snapshot, the status page, warnings for unknown options, `publish()`
//! over the WebSocket and over HTTP, long-polling on a draining node, and a screenshot of
//! the demo page as an artifact.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

#[test]
fn sdk_and_demo_page_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run .ci/setup-tests (npm ci in tests/browser)"
    );
    let prices = topic("browser-prices");
    let telemetry = topic("browser-telemetry");
    // Prices keeps a snapshot, for the board that opens mid-session.
    let gw = Gateway::start(
        &[(&telemetry, 1)],
        &format!("[[topics]]\nname = \"{prices}\"\npartitions = 3\nsnapshot = true\n\n"),
    );
    let artifacts = root.join("tests/browser/artifacts");
    let out = Command::new("node")
        .arg(browser_dir.join("run.mjs"))
        .arg(format!("http://127.0.0.1:{}", gw.port))
        .args([&prices, &telemetry])
        .arg(&artifacts)
        .current_dir(&browser_dir)
        .output()
        .expect("run node (install it with .ci/setup-tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok:")).count(),
        14,
        "{stdout}"
    );
    assert!(artifacts.join("demo-page.png").exists(), "screenshot saved");
}
