//! Prefix caching: the keys and values of sequences the engine has finished, kept so that a
//! new prompt that begins with one of them is prefilled from where they end.
//!
//! Why: chat clients and agent frameworks send the whole conversation at every turn (system
//! prompt, tool definitions, every earlier message and answer), so turn `k + 1` repeats turn
//! `k`'s prompt and answer and adds a little. On a CPU, prefill runs at a few hundred tokens
//! per second, so re-running a 2,000-token conversation costs seconds before the first new
//! token; copying its cached keys and values costs milliseconds.
//!
//! What is kept: per elite (keys and values depend on the weights), the token ids of a
//! finished sequence (prompt and answer, as far as they went through the model) and their
//! cache. A prompt reuses the entry sharing its longest common prefix, up to its last token
//! (whose logits start the answer, so it always runs). Entries are evicted least recently
//! used first, within a byte budget; an entry that another entry extends is dropped as
//! redundant.
//!
//! Reuse changes nothing but rounding: the continued pass reads the same keys and values a
//! full prefill would have computed (checked to 1e-4 in swarm-model's `batched_decode`
//! tests), though its sums run in another order. So a sampled answer is the one a full
//! prefill would give unless a draw falls within rounding of a boundary; for bitwise
//! reproducibility across requests, turn the cache off (`--prefix-cache-mb 0`).
//!
//! The cache is generic over what it stores (the engine stores `swarm_model::KvCache`), so
//! its bookkeeping is tested without a model.

/// Prompts reuse at least this many tokens or none: a shorter reuse saves less than running
/// the prompt on its own pass costs (a prompt with no reuse shares its admission's batched
/// prefill).
pub const MIN_REUSED_TOKENS: usize = 32;

/// What the cache has done since the server started, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompts that reused a cached prefix.
    pub hits: u64,
    /// Prompt tokens not prefilled thanks to a hit.
    pub reused_tokens: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now.
    pub bytes: usize,
}

struct Entry<V> {
    elite: String,
    tokens: Vec<u32>,
    value: V,
    bytes: usize,
    last_used: u64,
}

/// Cached sequences by elite and token prefix, bounded by a byte budget. See the module
/// docs.
pub struct PrefixCache<V> {
    budget: usize,
    bytes: usize,
    clock: u64,
    entries: Vec<Entry<V>>,
    hits: u64,
    reused_tokens: u64,
}

impl<V> PrefixCache<V> {
    /// An empty cache holding at most `budget` bytes (0 turns it off).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            clock: 0,
            entries: Vec::new(),
            hits: 0,
            reused_tokens: 0,
        }
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            hits: self.hits,
            reused_tokens: self.reused_tokens,
            entries: self.entries.len(),
            bytes: self.bytes,
        }
    }

    /// How many of `prompt`'s first tokens `elite` could reuse: at most all but the last,
    /// and 0 below [`MIN_REUSED_TOKENS`]. Changes nothing.
    pub fn reusable(&self, elite: &str, prompt: &[u32]) -> usize {
        self.best(elite, prompt).map_or(0, |(_, n)| n)
    }

    /// The entry to continue `prompt` from and how many of its tokens to take (as
    /// [`PrefixCache::reusable`] says); counts a hit and marks the entry used.
    pub fn lookup(&mut self, elite: &str, prompt: &[u32]) -> Option<(&V, usize)> {
        let (i, n) = self.best(elite, prompt)?;
        self.clock += 1;
        self.hits += 1;
        self.reused_tokens += n as u64;
        let entry = &mut self.entries[i];
        entry.last_used = self.clock;
        Some((&entry.value, n))
    }

    /// Whether [`PrefixCache::insert`] would keep `tokens` of `elite`: the cache is on, the
    /// sequence is long enough to be reused, and no entry holds it already (as a prefix of
    /// its own tokens). Lets the caller skip building a value that would be dropped.
    pub fn wants(&self, elite: &str, tokens: &[u32]) -> bool {
        self.budget > 0
            && tokens.len() > MIN_REUSED_TOKENS
            && !self
                .entries
                .iter()
                .any(|e| e.elite == elite && e.tokens.starts_with(tokens))
    }

    /// Keeps `value`, the cache of `tokens` run by `elite`, taking `bytes`. Entries of the
    /// same elite whose tokens `tokens` extends are dropped (this one serves every prompt
    /// they served), then the least recently used ones until it fits. A value larger than
    /// the whole budget, or one [`PrefixCache::wants`] refuses, is dropped.
    pub fn insert(&mut self, elite: &str, tokens: Vec<u32>, value: V, bytes: usize) {
        if !self.wants(elite, &tokens) || bytes > self.budget {
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let redundant = e.elite == elite && tokens.starts_with(&e.tokens);
            if redundant {
                freed += e.bytes;
            }
            !redundant
        });
        self.bytes -= freed;
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.clock += 1;
        self.bytes += bytes;
        self.entries.push(Entry {
            elite: elite.to_string(),
            tokens,
            value,
            bytes,
            last_used: self.clock,
        });
    }

    /// The entry with the longest usable common prefix with `prompt`, and that length.
    fn best(&self, elite: &str, prompt: &[u32]) -> Option<(usize, usize)> {
        let limit = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.elite == elite)
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .filter(|&(_, n)| n >= MIN_REUSED_TOKENS)
            .max_by_key(|&(i, n)| (n, self.entries[i].last_used))
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` tokens counting up from `start`.
    fn run(start: u32, n: usize) -> Vec<u32> {
        (start..start + n as u32).collect()
    }

    fn joined(a: &[u32], b: &[u32]) -> Vec<u32> {
        a.iter().chain(b).copied().collect()
    }

    #[test]
    fn a_prompt_reuses_the_longest_shared_prefix_of_its_own_elite() {
        let mut cache = PrefixCache::new(1000);
        let system = run(0, 40);
        cache.insert("a", joined(&system, &run(100, 10)), "a1", 10);
        cache.insert("a", joined(&system, &run(200, 20)), "a2", 10);
        cache.insert("b", joined(&system, &run(200, 30)), "b1", 10);
        let prompt = joined(&system, &run(200, 25));
        assert_eq!(cache.reusable("a", &prompt), 60);
        assert_eq!(cache.lookup("a", &prompt), Some((&"a2", 60)));
        // Another turn of the first conversation.
        let other = joined(&system, &run(100, 5));
        assert_eq!(cache.lookup("a", &other), Some((&"a1", 44)));
        // Another elite's keys and values never serve.
        assert_eq!(cache.reusable("c", &prompt), 0);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.reused_tokens), (2, 104));
        assert_eq!((stats.entries, stats.bytes), (3, 30));
    }

    #[test]
    fn the_last_prompt_token_always_runs_and_short_reuse_is_refused() {
        let mut cache = PrefixCache::new(1000);
        let tokens = run(0, 50);
        cache.insert("a", tokens.clone(), (), 1);
        // The same prompt again: all but its last token.
        assert_eq!(cache.reusable("a", &tokens), 49);
        // A prompt that shares fewer than MIN_REUSED_TOKENS tokens.
        let short = joined(&run(0, MIN_REUSED_TOKENS - 1), &run(500, 20));
        assert_eq!(cache.reusable("a", &short), 0);
        assert!(cache.lookup("a", &short).is_none());
        assert_eq!(cache.stats().hits, 0);
        // Too short to keep at all.
        assert!(!cache.wants("a", &run(0, MIN_REUSED_TOKENS)));
    }

    #[test]
    fn an_extended_sequence_replaces_its_prefix_and_a_covered_one_is_not_kept() {
        let mut cache = PrefixCache::new(1000);
        cache.insert("a", run(0, 40), "turn 1", 40);
        cache.insert("a", run(0, 60), "turn 2", 60);
        assert_eq!((cache.stats().entries, cache.stats().bytes), (1, 60));
        assert!(!cache.wants("a", &run(0, 50)));
        cache.insert("a", run(0, 50), "covered", 50);
        assert_eq!(cache.lookup("a", &run(0, 70)), Some((&"turn 2", 60)));
        // The same tokens under another elite are another entry.
        assert!(cache.wants("b", &run(0, 50)));
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let mut cache = PrefixCache::new(100);
        cache.insert("a", run(0, 40), 1, 40);
        cache.insert("a", run(1000, 40), 2, 40);
        // Using the first makes the second the oldest.
        assert!(cache.lookup("a", &run(0, 41)).is_some());
        cache.insert("a", run(2000, 40), 3, 40);
        assert_eq!(cache.stats().bytes, 80);
        assert_eq!(cache.reusable("a", &run(1000, 41)), 0);
        assert_eq!(cache.reusable("a", &run(0, 41)), 40);
        assert_eq!(cache.reusable("a", &run(2000, 41)), 40);
        // Larger than the budget: not kept, nothing evicted.
        cache.insert("a", run(3000, 40), 4, 101);
        assert_eq!(cache.stats().entries, 2);
        // A budget of 0 keeps nothing.
        let mut off = PrefixCache::new(0);
        off.insert("a", run(0, 40), 1, 0);
        assert_eq!(off.stats().entries, 0);
    }
}
