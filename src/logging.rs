//! Log setup: text for people, JSON for pipelines.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Crates whose info-level output is per-request noise (the embedded broker traces every decode).
const QUIET: &[&str] = &[
    "tansu_broker",
    "tansu_storage",
    "tansu_sans_io",
    "tansu_service",
    "tansu_auth",
    "tansu_schema",
    "libsql",
];

/// Installs the global subscriber; `RUST_LOG` overrides `log.level` when set.
pub fn init(config: &LogConfig) {
    let level = std::env::var("RUST_LOG").unwrap_or_else(|_| config.level.clone());
    let mut filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    for name in QUIET {
        // Only where the user did not ask for that crate by name.
        if !level.contains(name) {
            if let Ok(directive) = format!("{name}=warn").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        // The current span's fields (connection id, session) go on every line.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
