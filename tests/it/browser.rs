//! Issue 6: the SDK and the demo page in a real browser (Debian's chromium, driven by
//! playwright-core from tests/browser/run.mjs): live data, resume after a cut
//! connection with no missing offset, fallback to SSE and to long-polling, a board opened
//! mid-session from a snapshot, the status page, warnings for unknown options, `publish()`
//! over the WebSocket and over HTTP, long-polling on a draining node, permessage-deflate
//! negotiated by chromium, deltas applied by the SDK with the published values across a
//! forced reconnect, and a screenshot of the demo page as an artifact.

use std::path::PathBuf;

use crate::harness::*;

#[test]
fn sdk_and_demo_page_in_chromium() {
    let prices = topic("browser-prices");
    let telemetry = topic("browser-telemetry");
    // Prices keeps a snapshot, for the board that opens mid-session.
    let gw = Gateway::start(
        &[(&telemetry, 1)],
        &format!("[[topics]]\nname = \"{prices}\"\npartitions = 3\nsnapshot = true\n\n"),
    );
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/artifacts");
    let base = format!("http://127.0.0.1:{}", gw.port);
    let args = [base, prices, telemetry, artifacts.display().to_string()];
    browser_checks("run.mjs", &args, 16);
    assert!(artifacts.join("demo-page.png").exists(), "screenshot saved");
}
