//! `swarm`: evolve a swarm of specialist LLMs with CycleQD and serve it.
//!
//! A thin binary: each subcommand parses its flags and calls one library entry point.

mod bench;
mod chat;
mod model_args;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarm",
    version,
    about = "Evolve a swarm of specialist LLMs with CycleQD, and serve it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing's env-filter syntax), e.g. `debug` or `swarm_model=debug`.
    #[arg(long, global = true, env = "SWARM_LOG", default_value = "info")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat with a model (the default SmolLM2-135M-Instruct unless --model says otherwise).
    Chat(chat::ChatArgs),
    /// Answer one prompt and exit.
    Generate(chat::GenerateArgs),
    /// Measure prefill and decode speed and peak memory of a model.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match &cli.command {
        Command::Chat(args) => chat::run_chat(args),
        Command::Generate(args) => chat::run_generate(args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
