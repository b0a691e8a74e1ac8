//! `kgate bench`: run a load scenario and print a summary table.

use crate::bench::{self, FanoutOptions, ReplayOptions, ResumeOptions, Row, WireOptions};

/// Options of `kgate bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the results as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// N clients live on one channel while records are produced; deliveries/s vs a raw consumer.
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 20_000)]
        records: usize,
    },
    /// One client, then many, resuming far behind (Kafka tier and memory ring) vs a raw consumer.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        #[arg(long, default_value_t = 10)]
        clients: usize,
    },
    /// Durable clients reconnecting at once after a gateway restart.
    Resume {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        missed: usize,
    },
    /// Bytes per ticker event: JSON frames vs binary envelopes, JSON and Avro topics
    /// (run from the repository root: it reads schemas/tick.avsc).
    Wire {
        #[arg(long, default_value_t = 10_000)]
        records: usize,
    },
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let rows: Vec<Row> = match args.scenario {
        Scenario::Fanout { clients, records } => {
            bench::run_fanout(&FanoutOptions { clients, records }).await?
        }
        Scenario::Replay { records, clients } => {
            bench::run_replay(&ReplayOptions { records, clients }).await?
        }
        Scenario::Resume { clients, missed } => {
            bench::run_resume(&ResumeOptions { clients, missed }).await?
        }
        Scenario::Wire { records } => bench::run_wire(&WireOptions { records }).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        bench::print_table(&rows);
    }
    Ok(())
}
