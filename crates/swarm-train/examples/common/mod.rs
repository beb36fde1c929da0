//! What the toy examples share: settings from the environment and their start-up.

/// The environment variable `key` parsed as `T`; `None` when unset or unparsable.
pub fn env<T: std::str::FromStr>(key: &str) -> Option<T> {
    std::env::var(key).ok()?.parse().ok()
}

/// One candle thread per model (the examples run models side by side), the allocator tuned for
/// tensors, and info logs on stderr.
pub fn start() {
    swarm_model::configure_cpu_threads();
    swarm_model::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
}
