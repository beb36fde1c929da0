//! `/metrics` in the Prometheus text format (version 0.0.4), written by hand: a few counters
//! and histograms keyed by label values, behind one mutex (a few hundred nanoseconds per
//! request, far below a forward pass).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::engine::EngineStatus;

/// Latency buckets in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// (route, status, elite) -> count
    requests: BTreeMap<(String, u16, String), u64>,
    /// route -> latency
    latency: BTreeMap<String, Histogram>,
    /// route -> time to first token
    ttft: BTreeMap<String, Histogram>,
    /// elite -> tokens
    tokens_in: BTreeMap<String, u64>,
    tokens_out: BTreeMap<String, u64>,
    /// elite -> requests routed by the router (`swarm`) to it
    routed: BTreeMap<String, u64>,
    cancelled: u64,
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            // A panic elsewhere while holding the lock leaves counters usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// One finished HTTP request.
    pub fn request(&self, route: &str, status: u16, elite: &str, seconds: f64) {
        self.with(|m| {
            *m.requests
                .entry((route.to_string(), status, elite.to_string()))
                .or_default() += 1;
            m.latency
                .entry(route.to_string())
                .or_default()
                .observe(seconds);
        });
    }

    pub fn first_token(&self, route: &str, seconds: f64) {
        self.with(|m| {
            m.ttft
                .entry(route.to_string())
                .or_default()
                .observe(seconds)
        });
    }

    pub fn tokens(&self, elite: &str, prompt: u64, completion: u64) {
        self.with(|m| {
            *m.tokens_in.entry(elite.to_string()).or_default() += prompt;
            *m.tokens_out.entry(elite.to_string()).or_default() += completion;
        });
    }

    pub fn routed(&self, elite: &str) {
        self.with(|m| *m.routed.entry(elite.to_string()).or_default() += 1);
    }

    pub fn cancelled(&self) {
        self.with(|m| m.cancelled += 1);
    }

    /// The exposition, with the gauges read now.
    pub fn render(
        &self,
        queue_depth: usize,
        queue_capacity: usize,
        engine: &EngineStatus,
    ) -> String {
        let mut out = String::new();
        self.with(|m| {
            let _ = writeln!(
                out,
                "# HELP swarm_requests_total HTTP requests by route, status and serving elite."
            );
            let _ = writeln!(out, "# TYPE swarm_requests_total counter");
            for ((route, status, elite), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "swarm_requests_total{{route=\"{}\",status=\"{status}\",elite=\"{}\"}} {n}",
                    escape(route),
                    escape(elite)
                );
            }
            histogram(
                &mut out,
                "swarm_request_duration_seconds",
                "Request latency (until the last byte for streams).",
                &m.latency,
            );
            histogram(
                &mut out,
                "swarm_time_to_first_token_seconds",
                "Time from request to first generated text.",
                &m.ttft,
            );
            counter(
                &mut out,
                "swarm_prompt_tokens_total",
                "Prompt tokens by elite.",
                &m.tokens_in,
            );
            counter(
                &mut out,
                "swarm_completion_tokens_total",
                "Generated tokens by elite.",
                &m.tokens_out,
            );
            counter(
                &mut out,
                "swarm_routed_total",
                "Requests for the router (`swarm`) by chosen elite.",
                &m.routed,
            );
            let _ = writeln!(
                out,
                "# HELP swarm_cancelled_total Requests whose client went away before the end."
            );
            let _ = writeln!(out, "# TYPE swarm_cancelled_total counter");
            let _ = writeln!(out, "swarm_cancelled_total {}", m.cancelled);
        });
        for (name, help, v) in [
            (
                "swarm_queue_depth",
                "Requests admitted and not finished (running or waiting).",
                queue_depth,
            ),
            (
                "swarm_queue_capacity",
                "Requests admitted at most (beyond: 429).",
                queue_capacity,
            ),
            (
                "swarm_batch_size",
                "Sequences in the engine's running batch.",
                engine.batch_size,
            ),
            (
                "swarm_engine_batches",
                "Running batches: forward passes per decode step (one per dense elite, one \
                 for all elites served from factors).",
                engine.batches,
            ),
            (
                "swarm_engine_waiting",
                "Sequences waiting for a batch slot.",
                engine.waiting,
            ),
            (
                "swarm_elites_resident",
                "Elites with dense weights in memory.",
                engine.elites_resident,
            ),
            (
                "swarm_resident_weight_bytes",
                "Bytes of resident dense weights.",
                engine.resident_bytes,
            ),
            (
                "swarm_prefix_cache_entries",
                "Finished sequences whose keys and values the prefix cache holds.",
                engine.prefix_cache.entries,
            ),
            (
                "swarm_prefix_cache_bytes",
                "Bytes of keys and values the prefix cache holds.",
                engine.prefix_cache.bytes,
            ),
            (
                "swarm_ready",
                "1 when the engine is loaded and accepting jobs.",
                usize::from(engine.ready),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, v) in [
            (
                "swarm_forward_passes_total",
                "Forward passes the engine has run (prefill and decode).",
                engine.forward_passes,
            ),
            (
                "swarm_elite_materialisations_total",
                "Elites materialised into dense weights (after an eviction again).",
                engine.materialisations,
            ),
            (
                "swarm_prefix_cache_hits_total",
                "Prompts that continued a cached sequence instead of prefilling it.",
                engine.prefix_cache.hits,
            ),
            (
                "swarm_prefix_cache_reused_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled.",
                engine.prefix_cache.reused_tokens,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &BTreeMap<String, u64>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (elite, n) in values {
        let _ = writeln!(out, "{name}{{elite=\"{}\"}} {n}", escape(elite));
    }
}

fn histogram(out: &mut String, name: &str, help: &str, values: &BTreeMap<String, Histogram>) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (route, h) in values {
        let route = escape(route);
        for (i, b) in BUCKETS.iter().enumerate() {
            let c = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("/v1/chat/completions", 200, "e\"1", 0.3);
        m.tokens("e1", 10, 5);
        let text = m.render(
            2,
            8,
            &EngineStatus {
                ready: true,
                batch_size: 3,
                prefix_cache: crate::PrefixCacheStats {
                    hits: 4,
                    reused_tokens: 900,
                    entries: 2,
                    bytes: 1 << 20,
                },
                ..Default::default()
            },
        );
        assert!(text.contains(
            r#"swarm_requests_total{route="/v1/chat/completions",status="200",elite="e\"1"} 1"#
        ));
        assert!(text.contains(
            r#"swarm_request_duration_seconds_bucket{route="/v1/chat/completions",le="0.5"} 1"#
        ));
        assert!(text.contains(
            r#"swarm_request_duration_seconds_bucket{route="/v1/chat/completions",le="0.25"} 0"#
        ));
        assert!(text.contains("swarm_queue_depth 2"));
        assert!(text.contains("swarm_batch_size 3"));
        assert!(text.contains("swarm_forward_passes_total 0"));
        assert!(text.contains("swarm_elite_materialisations_total 0"));
        assert!(text.contains("swarm_prefix_cache_hits_total 4"));
        assert!(text.contains("swarm_prefix_cache_reused_tokens_total 900"));
        assert!(text.contains("swarm_prefix_cache_entries 2"));
        assert!(text.contains("swarm_prefix_cache_bytes 1048576"));
        assert!(text.contains(r#"swarm_completion_tokens_total{elite="e1"} 5"#));
    }
}
