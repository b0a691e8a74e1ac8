//! `kgate sessions`: inspect and delete durable sessions, through a running
//! gateway's admin routes or, with `--data-dir`, directly in a stopped gateway's store.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use kgate::store::SessionStore;

/// Options of `kgate sessions`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// Base URL of a running gateway.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Open the store in this data directory instead (the gateway must be stopped).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// A token with the `admin` claim (needed when the gateway's auth.mode is "jwt").
    #[arg(long, global = true, env = "KGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List sessions with their last-seen time.
    List,
    /// Show a session's subscriptions and positions.
    Show { id: String },
    /// Delete a session and its positions.
    Delete { id: String },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let value = match &args.data_dir {
        Some(dir) => {
            tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || offline(&dir, &args.action)
            })
            .await??
        }
        None => {
            tokio::task::spawn_blocking(move || {
                online(&args.url, args.token.as_deref(), &args.action)
            })
            .await??
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_default()
    );
    Ok(())
}

fn offline(dir: &std::path::Path, action: &Action) -> anyhow::Result<Value> {
    let store = SessionStore::open(dir, false)
        .with_context(|| format!("is a gateway still running on {}?", dir.display()))?;
    Ok(match action {
        Action::List => {
            let sessions: Vec<Value> = store
                .list()?
                .into_iter()
                .map(|(id, last_seen_ms)| serde_json::json!({"id": id, "last_seen_ms": last_seen_ms}))
                .collect();
            serde_json::json!({ "sessions": sessions })
        }
        Action::Show { id } => match store.load(id)? {
            Some(record) => serde_json::to_value(record)?,
            None => bail!("no session {id:?}"),
        },
        Action::Delete { id } => {
            if !store.delete(id)? {
                bail!("no session {id:?}");
            }
            serde_json::json!({ "deleted": id })
        }
    })
}

/// The admin URL of session `id`, percent-encoded (ids with auth on are `subject/id`).
fn session_url(base: &str, id: &str) -> String {
    let id: String =
        percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).collect();
    format!("{base}/{id}")
}

fn online(url: &str, token: Option<&str>, action: &Action) -> anyhow::Result<Value> {
    let base = format!("{}/v1/admin/sessions", url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bearer = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let response = match action {
        Action::List => agent.get(&base).header("authorization", &bearer).call(),
        Action::Show { id } => agent
            .get(&session_url(&base, id))
            .header("authorization", &bearer)
            .call(),
        Action::Delete { id } => agent
            .delete(&session_url(&base, id))
            .header("authorization", &bearer)
            .call(),
    }
    .with_context(|| {
        format!("cannot reach the gateway at {url} (or use --data-dir with a stopped gateway)")
    })?;
    let status = response.status();
    let body: Value = response
        .into_body()
        .read_json()
        .context("the gateway's answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            body["code"].as_str().unwrap_or("error"),
            body["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}
