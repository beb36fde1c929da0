//! `swarm evolve` as a standalone program, built from the very file the `swarm` binary uses
//! (`crates/swarm/src/evolve.rs`), so the subcommand can be run and checked from this crate.
//!
//! ```text
//! cargo run --release -p swarm-evolve --example evolve_cli -- --config configs/llama3-8b.toml --dry-run
//! ```

#[path = "../../swarm/src/evolve.rs"]
mod evolve;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "swarm-evolve", about = "Evolve a swarm with CycleQD")]
struct Cli {
    #[command(flatten)]
    args: evolve::EvolveArgs,
}

fn main() {
    // As the `swarm` binary's main does, before any tensor exists.
    swarm_model::configure_cpu_threads();
    swarm_model::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = evolve::run(&Cli::parse().args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
