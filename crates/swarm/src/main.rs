//! `swarm`: evolve a swarm of specialist LLMs with CycleQD and serve it.
//!
//! A thin binary: each subcommand parses its flags and calls one library entry point.

mod bench;
mod bootstrap;
mod chat;
mod eval;
mod evolve;
mod export;
mod materialise_bench;
mod merge;
mod model_args;
mod serve;
mod up;

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
    /// Measure prefill and decode speed and peak memory of a model (or, with --materialise,
    /// how fast genomes become dense weights).
    Bench(bench::BenchArgs),
    /// Train the toy world: a small base model and one expert per skill (coding, database, os).
    Bootstrap(bootstrap::BootstrapArgs),
    /// Evolve a swarm with CycleQD (default: configs/toy.toml on the toy world, built first if
    /// missing).
    Evolve(evolve::EvolveArgs),
    /// Merge models as a mergekit YAML config says (linear, task_arithmetic, ties, dare, slerp).
    Merge(merge::MergeArgs),
    /// Write one elite of a swarm as a standalone HF model dir.
    Export(export::ExportArgs),
    /// Score a model on a skill's suite with the real, sandboxed checkers.
    Eval(eval::EvalArgs),
    /// Serve a swarm (or one model) behind an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// The whole flow: build the toy world if missing, evolve a short swarm (configs/quick.toml)
    /// and serve it.
    Up(up::UpArgs),
}

fn main() {
    // Before any tensor exists: candle sizes its CPU pool once, and malloc keeps its tuning.
    swarm_model::configure_cpu_threads();
    swarm_model::configure_allocator();
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "error: --log `{}` is not a log filter: {e} (e.g. `debug`, `swarm_model=debug`)",
                cli.log
            );
            std::process::exit(2);
        }
    };
    // Colours only for a person at a terminal: a log sent to a file or a pipe stays plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
    let result = match &cli.command {
        Command::Chat(args) => chat::run_chat(args),
        Command::Generate(args) => chat::run_generate(args),
        Command::Bench(args) => bench::run(args),
        Command::Bootstrap(args) => bootstrap::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Evolve(args) => evolve::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Export(args) => export::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Up(args) => up::run(args),
    };
    if let Err(error) = result {
        eprintln!("error: {}", error_message(&error));
        std::process::exit(1);
    }
}

/// The error and its causes, joined by ": ", each said once.
///
/// Our error types print the I/O or parse error they wrap *and* expose it as their source
/// (so that a log line with `{}` is complete), which `{:#}` would print twice.
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_message;

    /// Shaped like our crates' `Io` variants: the source in the message and as the source.
    #[derive(Debug)]
    struct FileError {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for FileError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for FileError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_the_message_already_ends_with_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(FileError {
            path: "/m/config.json".into(),
            source: io,
        })
        .context("cannot open model `/m`");
        assert_eq!(
            error_message(&error),
            "cannot open model `/m`: /m/config.json: no such file"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let error = anyhow::anyhow!("invalid byte").context("reading prompt.txt");
        assert_eq!(error_message(&error), "reading prompt.txt: invalid byte");
    }
}
