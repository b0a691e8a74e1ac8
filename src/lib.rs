//! kgate: a durable event-streaming gateway from Kafka to WebSocket clients.
//!
//! The path of a record: [`kafka::ingest`] → [`codec`] → [`router`] →
//! [`session`] → [`connection`] → [`transport`].

pub mod auth;
pub mod blocking;
pub mod codec;
pub mod config;
pub mod connection;
pub mod gateway;
pub mod kafka;
pub mod limits;
pub mod logging;
pub mod router;
pub mod session;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod transport;

#[cfg(test)]
mod docs_tests {
    /// Every `src/...` path README.md and docs/ name exists: a file moved without its
    /// docs is a stale sentence.
    #[test]
    fn source_paths_named_in_the_docs_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut pages = vec![root.join("README.md")];
        for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
            let path = entry.expect("docs entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
        let mut missing = Vec::new();
        let mut named = 0;
        for page in &pages {
            let text = std::fs::read_to_string(page).expect("readable page");
            for (i, _) in text.match_indices("src/") {
                // Only paths that start at a word boundary (not `benches/src/...`).
                if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '.') {
                    continue;
                }
                let path: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '_' | '.' | '-'))
                    .collect();
                let path = path.trim_end_matches('.');
                named += 1;
                if !root.join(path).exists() {
                    missing.push(format!("{}: {path}", page.display()));
                }
            }
        }
        assert!(named > 20, "the docs name source files ({named} found)");
        assert!(
            missing.is_empty(),
            "named in the docs but missing:\n{}",
            missing.join("\n")
        );
    }
}
