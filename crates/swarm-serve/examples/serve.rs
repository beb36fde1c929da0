//! `swarm serve` without the rest of the CLI: the same flags (the `swarm` binary's
//! `serve.rs`, included as is), for the integration tests and the load benchmark.
//!
//! ```text
//! cargo run --release -p swarm-serve --example serve -- --port 8080
//! ```

#[path = "../../swarm/src/serve.rs"]
mod serve;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "swarm-serve",
    about = "Serve the swarm behind one OpenAI-compatible endpoint."
)]
struct Cli {
    #[command(flatten)]
    args: serve::ServeArgs,
}

fn main() -> anyhow::Result<()> {
    swarm_model::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    serve::run(&Cli::parse().args)
}
