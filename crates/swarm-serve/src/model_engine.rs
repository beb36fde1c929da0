//! The real engine: continuous batching over swarm-model's `Llama`, on one scheduler thread.
//!
//! One thread owns all scheduling state (style §11): jobs arrive over a channel; between two
//! decode steps the scheduler admits waiting jobs (a left-padded batched prefill, one per dense
//! elite and one for all the elites served from factors, whose caches [`KvCache::concat`]
//! joins to their running batch), then runs one decode step per batch, samples every row with
//! its own seeded sampler and sends the new text down each job's channel. A row whose receiver was dropped (the client went away) or whose
//! deadline passed leaves the batch at the next step ([`KvCache::select_rows`]).
//!
//! Mixed elites: the elites' models come from an [`EliteCache`], dense (resident in its LRU)
//! or served from factors, as its [`ServingPolicy`](crate::ServingPolicy) says.
//!
//! - Every elite served from factors shares the base's dense weights, so all their rows run
//!   in **one mixed batch**, grouped contiguously by elite, with one KV cache and one forward
//!   pass per step ([`Llama::prefill_grouped`], [`Llama::decode_grouped`]): each dense
//!   product of the base runs once for all those rows; each elite's norms and biases run on
//!   its own rows, and its low-rank deltas too, unless (as for a swarm's elites) they share
//!   the factor set's tensors: then each matrix's deltas are one product pair for all rows,
//!   each row scaled by its elite's coefficients. Jobs admitted together are prefilled in one grouped pass;
//!   their rows join the mixed batch next to their elite's rows (the joined cache reordered
//!   once), and rows that finish leave it in place (groups stay contiguous).
//! - Each dense (materialised) elite has its own batch and forward pass per step: dense
//!   elites share no weights, so grouping them would save nothing.
//!
//! When an elite served from factors is materialised (`Auto`, once it has run enough tokens
//! and carries enough of the mixed batch's rows), its rows already running stay in the mixed
//! batch with the factored model until they end (the two compute the same function up to
//! float rounding, and moving a row would copy its cache); its new jobs go to its dense
//! batch. The engine tells the cache each elite's prompt tokens and, every decode step of
//! the mixed batch, its rows and the batch's, which is what decides when an elite served
//! from factors is worth materialising. [`EngineStatus::forward_passes`] counts the passes
//! run.
//!
//! Prefix caching: when a sequence completes, its row's keys and values (prompt and answer)
//! are copied into a [`PrefixCache`] before the row leaves the batch. A prompt that begins
//! with a cached sequence of its elite is admitted on its own: a copy of the cached keys and
//! values ([`KvCache::copy_row`]), one pass over the rest of the prompt, then its row joins
//! the running batch like any prefilled row.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Instant;

use candle_core::DType;
use swarm_model::{
    ChatTemplate, JsonCheck, KvCache, Llama, LogitAdjustments, RowGroup, Sampler, TextStream,
    Tokenizer,
};
use tokio::sync::mpsc;

use crate::engine::{
    Engine, EngineStatus, Event, Failure, FinishReason, GenerateJob, PromptLogprobs, TokenLogprob,
    TopLogprob,
};
use crate::error::{Result, ServeError};
use crate::guide::AnswerGuide;
use crate::prefix_cache::PrefixCache;
use crate::registry::EliteCache;
use crate::validation::Prompt;

/// Prompt positions whose logits an echoed prompt's log-probabilities hold at once (SmolLM2:
/// 256 x 49,152 f32, 50 MB).
const ECHO_CHUNK: usize = 256;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct ModelEngineConfig {
    /// Sequences running at once, all elites together.
    pub max_batch: usize,
    /// Prompt tokens prefilled between two decode steps (at least one job is always
    /// admitted), so that long prompts do not stall the running streams for long.
    pub max_prefill_tokens: usize,
    /// Bytes of finished sequences' keys and values kept for prompts that begin with them
    /// ([`PrefixCache`]); 0 turns prefix caching off.
    pub prefix_cache_bytes: usize,
}

impl Default for ModelEngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_prefill_tokens: 2048,
            prefix_cache_bytes: 256 << 20,
        }
    }
}

/// What the scheduler needs once loading is done.
pub struct LoadedSwarm {
    pub elites: EliteCache,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// End-of-turn and EOS tokens.
    pub stop_ids: Vec<u32>,
    /// Elites to materialise before reporting ready (whatever the serving policy).
    pub warm: Vec<String>,
}

type Submission = (GenerateJob, mpsc::UnboundedSender<Event>);

/// The continuous-batching engine. Cheap to share (`Arc<dyn Engine>`).
pub struct ModelEngine {
    jobs: Mutex<std_mpsc::Sender<Submission>>,
    status: Arc<Mutex<EngineStatus>>,
    draining: AtomicBool,
}

impl ModelEngine {
    /// Starts the scheduler thread, which first runs `load` (the engine reports not ready,
    /// and the server answers 503, until it returns).
    pub fn start(
        config: ModelEngineConfig,
        load: impl FnOnce() -> Result<LoadedSwarm> + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = std_mpsc::channel::<Submission>();
        let status = Arc::new(Mutex::new(EngineStatus::default()));
        let thread_status = status.clone();
        std::thread::Builder::new()
            .name("swarm-scheduler".to_string())
            .spawn(move || {
                let loaded = match load() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "loading the swarm failed");
                        // Answer every job until the engine is dropped.
                        while let Ok((_, tx)) = rx.recv() {
                            let _ = tx.send(Event::Failed(Failure::Unavailable(
                                "the swarm failed to load; see the server log".to_string(),
                            )));
                        }
                        return;
                    }
                };
                let mut scheduler = Scheduler::new(config, loaded, thread_status);
                scheduler.run(rx);
            })
            .map_err(|e| ServeError::Engine(format!("cannot start the scheduler thread: {e}")))?;
        Ok(Self {
            jobs: Mutex::new(tx),
            status,
            draining: AtomicBool::new(false),
        })
    }
}

impl Engine for ModelEngine {
    fn submit(
        &self,
        job: GenerateJob,
    ) -> std::result::Result<mpsc::UnboundedReceiver<Event>, Failure> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Failure::Unavailable("the server is shutting down".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = self
            .jobs
            .lock()
            .map_err(|_| Failure::Internal("scheduler channel poisoned".into()))?;
        sender
            .send((job, tx))
            .map_err(|_| Failure::Unavailable("the engine has stopped".into()))?;
        Ok(rx)
    }

    fn status(&self) -> EngineStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// One running (or waiting) sequence.
struct Seq {
    request_id: String,
    tx: mpsc::UnboundedSender<Event>,
    prompt: Vec<u32>,
    sampler: Sampler,
    text: TextStream,
    tokens: Vec<u32>,
    max_new: usize,
    /// Alternatives to report beside each token's log-probability; `None`: none asked.
    logprobs: Option<usize>,
    /// JSON mode or function calling: the answer so far, which every token must keep a
    /// prefix of what it must become.
    guide: Option<AnswerGuide>,
    /// `logit_bias` and the penalties, applied to the logits before sampling (not to the
    /// log-probabilities reported, which are the model's own).
    adjustments: Option<LogitAdjustments>,
    /// `echo`: the prompt's text, sent back once the prompt is prefilled.
    echo: Option<String>,
    deadline: Option<Instant>,
    /// The token sampled last, to feed at the next decode step.
    next: u32,
    /// Prompt tokens taken from the prefix cache (while waiting for admission: how many it
    /// could take).
    cached: usize,
    /// Left the batch; `completed` when it ended with `Done` (not failed or cancelled), which
    /// is when its keys and values are worth keeping.
    done: bool,
    completed: bool,
}

/// One elite's rows in a batch, run by `model`.
struct Group {
    elite: String,
    model: Arc<Llama>,
    seqs: Vec<Seq>,
}

/// A running batch: the rows of `groups`, in order (each group's rows contiguous), are the
/// rows of `cache`. A dense elite's batch has one group; the mixed batch of the elites
/// served from factors has one per elite.
struct Batch {
    groups: Vec<Group>,
    cache: KvCache,
    /// Whether this is the mixed batch of elites served from factors (there is at most one).
    factored: bool,
}

impl Batch {
    fn rows(&self) -> usize {
        self.groups.iter().map(|g| g.seqs.len()).sum()
    }

    fn seqs(&self) -> impl Iterator<Item = &Seq> {
        self.groups.iter().flat_map(|g| &g.seqs)
    }

    fn seqs_mut(&mut self) -> impl Iterator<Item = &mut Seq> {
        self.groups.iter_mut().flat_map(|g| &mut g.seqs)
    }

    /// Removes finished rows from the groups and the cache (the rows left keep their order,
    /// so groups stay contiguous), and groups left empty.
    fn compact(&mut self) -> swarm_model::Result<()> {
        if self.seqs().all(|s| !s.done) {
            return Ok(());
        }
        let alive: Vec<usize> = self
            .seqs()
            .enumerate()
            .filter(|(_, s)| !s.done)
            .map(|(i, _)| i)
            .collect();
        if alive.is_empty() {
            self.groups.clear();
            return Ok(());
        }
        self.cache.select_rows(&alive)?;
        for g in &mut self.groups {
            g.seqs.retain(|s| !s.done);
        }
        self.groups.retain(|g| !g.seqs.is_empty());
        Ok(())
    }

    /// Adds `other`'s rows, each next to the rows of its elite already here (new elites'
    /// groups after the others): the caches are joined, then reordered once when a group
    /// grows in the middle. On an error every row is kept in `groups` (for the caller to
    /// fail them all).
    fn join(&mut self, other: Batch) -> swarm_model::Result<()> {
        let Batch {
            groups: incoming,
            cache,
            ..
        } = other;
        // Where each group's rows are in the joined cache: ours first, then `other`'s.
        let mut ours = Vec::with_capacity(self.groups.len());
        let mut start = 0;
        for g in &self.groups {
            ours.push(start..start + g.seqs.len());
            start += g.seqs.len();
        }
        let mut theirs = Vec::with_capacity(incoming.len());
        for g in incoming {
            theirs.push((start..start + g.seqs.len(), g));
            start += theirs.last().map_or(0, |(r, _)| r.len());
        }
        // The joined order: each of our groups, grown by `other`'s group of its elite, then
        // `other`'s new elites.
        let mut order: Vec<usize> = Vec::with_capacity(start);
        for (g, rows) in self.groups.iter_mut().zip(ours) {
            order.extend(rows);
            if let Some(k) = theirs.iter().position(|(_, n)| n.elite == g.elite) {
                let (rows, new) = theirs.remove(k);
                order.extend(rows);
                // The group keeps its model: a newer model of the same elite (rebuilt from
                // factors, or materialised) computes the same function.
                g.seqs.extend(new.seqs);
            }
        }
        for (rows, g) in theirs {
            order.extend(rows);
            self.groups.push(g);
        }
        let old = std::mem::replace(&mut self.cache, KvCache::new(0, 0, 0));
        self.cache = KvCache::concat(&[old, cache])?;
        if order.iter().enumerate().any(|(i, &r)| i != r) {
            self.cache.select_rows(&order)?;
        }
        Ok(())
    }
}

/// Every token's bytes, worked out once at load: what log-probabilities report and what
/// JSON mode checks a token against.
struct TokenTable {
    bytes: Vec<Vec<u8>>,
    /// Special tokens (end of turn, chat markers): not text, so never part of a JSON answer.
    special: Vec<bool>,
    /// The tokens that end the assistant's turn.
    ends_turn: Vec<bool>,
}

impl TokenTable {
    fn new(tokenizer: &Tokenizer, vocab: usize, stop_ids: &BTreeSet<u32>) -> Self {
        let specials: BTreeSet<u32> = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        // An id the model has a logit for but the tokenizer lacks (a padded vocabulary)
        // stands for no text.
        let bytes = (0..vocab as u32)
            .map(|id| tokenizer.token_bytes(id).unwrap_or_default())
            .collect();
        let special = (0..vocab as u32).map(|id| specials.contains(&id)).collect();
        let ends_turn = (0..vocab as u32).map(|id| stop_ids.contains(&id)).collect();
        Self {
            bytes,
            special,
            ends_turn,
        }
    }

    fn bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether token `id` may come next under `guide`: an end-of-turn token where the
    /// answer may end, another special token only in free text, else a token whose bytes
    /// keep the answer a prefix of what it must become.
    fn allowed(&self, guide: &AnswerGuide, id: u32) -> bool {
        let i = id as usize;
        match (
            self.bytes.get(i),
            self.special.get(i),
            self.ends_turn.get(i),
        ) {
            (_, _, Some(true)) => guide.may_end(),
            (_, Some(true), _) => guide.is_free_text(),
            (Some(bytes), Some(false), _) => {
                (!bytes.is_empty() || guide.is_free_text()) && guide.accepts(bytes)
            }
            _ => false,
        }
    }
}

struct Scheduler {
    config: ModelEngineConfig,
    elites: EliteCache,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: BTreeSet<u32>,
    max_positions: usize,
    vocab: usize,
    tokens: TokenTable,
    waiting: VecDeque<(String, Seq)>,
    batches: Vec<Batch>,
    /// Forward passes run so far (prefill and decode).
    forward_passes: u64,
    /// Finished sequences' keys and values, by elite.
    prefix: PrefixCache<KvCache>,
    status: Arc<Mutex<EngineStatus>>,
}

impl Scheduler {
    fn new(
        config: ModelEngineConfig,
        loaded: LoadedSwarm,
        status: Arc<Mutex<EngineStatus>>,
    ) -> Self {
        let mut elites = loaded.elites;
        for elite in &loaded.warm {
            if let Err(e) = elites.materialise(elite) {
                tracing::error!(elite, error = %e, "cannot materialise elite");
            }
        }
        if let Err(e) = elites.prepare() {
            tracing::error!(error = %e, "cannot load the base for serving from factors");
        }
        let mut stop_ids: BTreeSet<u32> = loaded.stop_ids.into_iter().collect();
        stop_ids.extend(elites.config().eos_token_ids.iter().copied());
        stop_ids.extend(loaded.tokenizer.eos_token_id());
        let max_positions = elites.config().max_position_embeddings;
        let vocab = elites.config().vocab_size;
        let tokens = TokenTable::new(&loaded.tokenizer, vocab, &stop_ids);
        let s = Self {
            prefix: PrefixCache::new(config.prefix_cache_bytes),
            config,
            elites,
            tokens,
            tokenizer: loaded.tokenizer,
            template: loaded.template,
            stop_ids,
            max_positions,
            vocab,
            waiting: VecDeque::new(),
            batches: Vec::new(),
            forward_passes: 0,
            status,
        };
        s.publish(true);
        tracing::info!(max_positions, "engine ready");
        s
    }

    fn publish(&self, ready: bool) {
        let mut st = match self.status.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        st.ready = ready;
        st.batch_size = self.running();
        st.batches = self.batches.len();
        st.forward_passes = self.forward_passes;
        st.materialisations = self.elites.loads;
        st.waiting = self.waiting.len();
        st.elites_resident = self.elites.resident();
        st.resident_bytes = self.elites.resident_bytes();
        st.prefix_cache = self.prefix.stats();
    }

    fn running(&self) -> usize {
        self.batches.iter().map(Batch::rows).sum()
    }

    fn run(&mut self, rx: std_mpsc::Receiver<Submission>) {
        loop {
            if self.batches.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(s) => self.intake(s),
                    Err(_) => return, // the engine was dropped
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.intake(s);
            }
            self.expire_waiting();
            self.admit();
            self.decode_step();
            self.publish(true);
        }
    }

    /// Tokenises a job and reports `Started` (or why it cannot run).
    fn intake(&mut self, (job, tx): Submission) {
        match self.prepare(job, tx.clone()) {
            Ok((elite, seq)) => {
                let _ = tx.send(Event::Started {
                    prompt_tokens: seq.prompt.len(),
                });
                self.waiting.push_back((elite, seq));
            }
            Err(f) => {
                let _ = tx.send(Event::Failed(f));
            }
        }
    }

    fn prepare(
        &self,
        job: GenerateJob,
        tx: mpsc::UnboundedSender<Event>,
    ) -> std::result::Result<(String, Seq), Failure> {
        let internal = |e: &dyn std::fmt::Display| Failure::Internal(e.to_string());
        // The prompt's ids, and its text as `echo` gives it back.
        let (prompt, text) = match &job.prompt {
            Prompt::Chat(messages) => {
                let text = self
                    .template
                    .render(messages, true)
                    .map_err(|e| Failure::Invalid(format!("the chat template failed: {e}")))?;
                let ids = self
                    .tokenizer
                    .encode(&text, false)
                    .map_err(|e| internal(&e))?;
                (ids, text)
            }
            Prompt::Text(text) => (
                self.tokenizer
                    .encode(text, true)
                    .map_err(|e| internal(&e))?,
                text.clone(),
            ),
            Prompt::Tokens(ids) => {
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
                    return Err(Failure::InvalidToken(bad));
                }
                let text = if job.params.echo {
                    self.tokenizer
                        .decode(ids, false)
                        .map_err(|e| internal(&e))?
                } else {
                    String::new()
                };
                (ids.clone(), text)
            }
        };
        if prompt.is_empty() {
            return Err(Failure::Invalid("the prompt is empty".to_string()));
        }
        if prompt.len() >= self.max_positions {
            return Err(Failure::PromptTooLong {
                tokens: prompt.len(),
                limit: self.max_positions - 1,
            });
        }
        let p = &job.params;
        if let Some(&(bad, _)) = p
            .logit_bias
            .iter()
            .find(|&&(t, _)| t as usize >= self.vocab)
        {
            return Err(Failure::InvalidField {
                param: "logit_bias".to_string(),
                message: format!(
                    "`logit_bias` names token {bad}; this model's vocabulary has {} tokens",
                    self.vocab
                ),
            });
        }
        let adjustments = LogitAdjustments {
            bias: p.logit_bias.clone(),
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
        };
        let sampler = Sampler::new(swarm_model::SamplingParams {
            temperature: f64::from(p.temperature),
            top_k: 0,
            top_p: f64::from(p.top_p),
            seed: p.seed,
        })
        .map_err(|e| Failure::Invalid(e.to_string()))?;
        let max_new = p.max_tokens.min(self.max_positions - prompt.len());
        Ok((
            job.elite,
            Seq {
                request_id: job.request_id,
                tx,
                prompt,
                sampler,
                // Empty stop strings can never match; the API accepts and ignores them.
                text: TextStream::new(p.stop.iter().filter(|s| !s.is_empty()).cloned().collect())
                    .map_err(|e| Failure::Invalid(e.to_string()))?,
                tokens: Vec::new(),
                max_new,
                logprobs: p.logprobs,
                guide: match (&p.tools, &p.json) {
                    (Some(tools), _) => Some(AnswerGuide::tools(tools.clone())),
                    (None, Some(format)) => Some(AnswerGuide::json(format)),
                    (None, None) => None,
                },
                echo: p.echo.then_some(text),
                adjustments: (!adjustments.is_identity()).then_some(adjustments),
                deadline: job.deadline,
                next: 0,
                cached: 0,
                done: false,
                completed: false,
            },
        ))
    }

    /// Drops waiting jobs whose client left or whose deadline passed.
    fn expire_waiting(&mut self) {
        let now = Instant::now();
        self.waiting.retain(|(_, s)| {
            if s.tx.is_closed() {
                return false;
            }
            if s.deadline.is_some_and(|d| now >= d) {
                let _ = s.tx.send(Event::Failed(Failure::Timeout));
                return false;
            }
            true
        });
    }

    /// Moves waiting jobs into the running batches (prefill), within the batch and prefill
    /// budgets.
    fn admit(&mut self) {
        let mut free = self.config.max_batch.saturating_sub(self.running());
        let mut budget = self.config.max_prefill_tokens;
        let mut admitted: Vec<(String, Seq)> = Vec::new();
        // Elites that must be materialised (not resident, not running, and the policy or
        // the source cannot serve them from factors) wait while the memory budget is taken
        // by elites in use: the budget bounds memory; jobs of hot elites go first.
        let mut room = self.elites.room_for_new();
        let mut new_elites: Vec<String> = Vec::new();
        let mut pinned: Vec<String> = Vec::new();
        let mut passed_over = VecDeque::new();
        while free > 0 {
            let Some((elite, mut seq)) = self.waiting.pop_front() else {
                break;
            };
            // A prompt that continues a cached sequence prefills only the rest (the scan is
            // done once here; the entry itself is looked up again at its prefill, since
            // sequences that finish in the prefills before it can change the cache).
            seq.cached = self.prefix.reusable(&elite, &seq.prompt);
            let to_prefill = seq.prompt.len() - seq.cached;
            if !admitted.is_empty() && to_prefill > budget {
                self.waiting.push_front((elite, seq));
                break;
            }
            let running = self
                .batches
                .iter()
                .any(|b| b.groups.iter().any(|g| g.elite == elite));
            let resident = self.elites.is_resident(&elite);
            if resident && !running && !pinned.contains(&elite) {
                // An idle resident elite counted as evictable is about to be used.
                pinned.push(elite.clone());
                room = room.saturating_sub(1);
            }
            if self.elites.needs_room(&elite) && !(running || new_elites.contains(&elite)) {
                if room == 0 {
                    passed_over.push_back((elite, seq));
                    continue;
                }
                room -= 1;
                new_elites.push(elite.clone());
            }
            budget = budget.saturating_sub(to_prefill);
            free -= 1;
            admitted.push((elite, seq));
        }
        // Jobs passed over keep their place at the front.
        while let Some(job) = passed_over.pop_back() {
            self.waiting.push_front(job);
        }
        // Resident elites first, so that no new elite evicts one just admitted.
        admitted.sort_by_key(|(e, _)| !self.elites.is_resident(e));
        // Group by elite, keeping arrival order within each group. Dense elites are
        // prefilled one batch each; the elites served from factors together, in one pass.
        let mut factored: Vec<Group> = Vec::new();
        while !admitted.is_empty() {
            let elite = admitted[0].0.clone();
            let (group, rest): (Vec<_>, Vec<_>) =
                admitted.into_iter().partition(|(e, _)| *e == elite);
            admitted = rest;
            let seqs: Vec<Seq> = group.into_iter().map(|(_, s)| s).collect();
            // The exact check, now that the elites prefilled before this one are in use:
            // an elite that would exceed the budget waits (at the front of the queue).
            if self.elites.needs_room(&elite) && self.elites.room_for_new() == 0 {
                for s in seqs.into_iter().rev() {
                    self.waiting.push_front((elite.clone(), s));
                }
                continue;
            }
            let model = match self.elites.get(&elite) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(elite, error = %e, "cannot load elite");
                    for s in &seqs {
                        let _ = s.tx.send(Event::Failed(Failure::Internal(format!(
                            "cannot materialise elite {elite}: {e}"
                        ))));
                    }
                    continue;
                }
            };
            // `get` serves an elite that is not resident from factors.
            let dense = self.elites.is_resident(&elite);
            // Prompts that continue a cached sequence run one by one from its copy; the
            // others are prefilled together.
            let (continued, fresh): (Vec<Seq>, Vec<Seq>) =
                seqs.into_iter().partition(|s| s.cached > 0);
            for seq in continued {
                let group = Group {
                    elite: elite.clone(),
                    model: model.clone(),
                    seqs: vec![seq],
                };
                self.prefill_after_prefix(group, !dense);
            }
            if fresh.is_empty() {
                continue;
            }
            let group = Group {
                elite,
                model,
                seqs: fresh,
            };
            if dense {
                self.prefill(vec![group], false);
            } else {
                factored.push(group);
            }
        }
        if !factored.is_empty() {
            self.prefill(factored, true);
        }
    }

    /// Prefills `groups` (not empty) in one pass and joins their rows to the running batch
    /// they belong to: the mixed batch when `factored`, else their elite's own batch. A
    /// failed pass fails its jobs.
    fn prefill(&mut self, groups: Vec<Group>, factored: bool) {
        let prompts: Vec<Vec<u32>> = groups
            .iter()
            .flat_map(|g| &g.seqs)
            .map(|s| s.prompt.clone())
            .collect();
        let capacity = groups
            .iter()
            .flat_map(|g| &g.seqs)
            .map(|s| s.prompt.len() + s.max_new)
            .max()
            .unwrap_or(0)
            .min(self.max_positions);
        let mut cache = KvCache::new(
            self.elites.config().num_hidden_layers,
            prompts.len(),
            capacity,
        );
        let row_groups: Vec<RowGroup> = groups
            .iter()
            .map(|g| RowGroup::new(&g.model, g.seqs.len()))
            .collect();
        let logits = Llama::prefill_grouped(&row_groups, &prompts, &mut cache)
            .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?));
        drop(row_groups);
        self.forward_passes += 1;
        if factored && logits.is_ok() {
            for g in &groups {
                let prompt = g.seqs.iter().map(|s| s.prompt.len()).sum();
                self.elites.record_prefill(&g.elite, prompt);
            }
        }
        let batch = Batch {
            groups,
            cache,
            factored,
        };
        self.start(batch, logits);
    }

    /// Prefills the one job of `group` from the cached sequence its prompt continues: a
    /// copy of the cached keys and values, then one pass over the rest of the prompt (falls
    /// back to a full prefill if the entry is gone).
    fn prefill_after_prefix(&mut self, mut group: Group, factored: bool) {
        let Some(seq) = group.seqs.first_mut() else {
            return;
        };
        let capacity = (seq.prompt.len() + seq.max_new).min(self.max_positions);
        let Some((prefix, reused)) = self.prefix.lookup(&group.elite, &seq.prompt) else {
            seq.cached = 0;
            self.prefill(vec![group], factored);
            return;
        };
        seq.cached = reused;
        let rest = &seq.prompt[reused..];
        let run = || -> swarm_model::Result<(KvCache, Vec<Vec<f32>>)> {
            let mut cache = prefix.copy_row(0, reused, capacity)?;
            let ids = candle_core::Tensor::new(rest, group.model.device())?.unsqueeze(0)?;
            let logits = group.model.forward_last(&ids, &mut cache)?;
            Ok((cache, logits.to_dtype(DType::F32)?.to_vec2::<f32>()?))
        };
        let result = run();
        let rest = rest.len();
        self.forward_passes += 1;
        if factored && result.is_ok() {
            self.elites.record_prefill(&group.elite, rest);
        }
        let (cache, logits) = match result {
            Ok((cache, logits)) => (cache, Ok(logits)),
            Err(e) => (KvCache::new(0, 0, 0), Err(e)),
        };
        let batch = Batch {
            groups: vec![group],
            cache,
            factored,
        };
        self.start(batch, logits);
    }

    /// Takes a prefilled batch's first tokens (`logits`: each row's last prompt position),
    /// then joins its rows to the running batch they belong to. A failed pass fails its jobs.
    fn start(&mut self, mut batch: Batch, logits: swarm_model::Result<Vec<Vec<f32>>>) {
        let factored = batch.factored;
        let rows = match logits {
            Ok(rows) => rows,
            Err(e) => {
                Self::fail_batch(&mut batch, &format!("prefill: {e}"));
                return;
            }
        };
        let mut rows = rows.iter();
        for group in &mut batch.groups {
            for s in &mut group.seqs {
                let Some(row) = rows.next() else { break };
                if let Some(text) = s.echo.take() {
                    let logprobs = match s.logprobs {
                        Some(top) => match self.prompt_logprobs(&group.model, &s.prompt, top) {
                            Ok(l) => Some(l),
                            Err(e) => {
                                let _ = s.tx.send(Event::Failed(Failure::Internal(format!(
                                    "the prompt's log-probabilities: {e}"
                                ))));
                                s.done = true;
                                continue;
                            }
                        },
                        None => None,
                    };
                    let _ = s.tx.send(Event::Echo { text, logprobs });
                }
                if s.max_new == 0 {
                    // `echo` with no new tokens: the prompt was the answer.
                    let _ = s.tx.send(Event::Done {
                        finish: FinishReason::Length,
                        completion_tokens: 0,
                        cached_tokens: s.cached,
                    });
                    s.done = true;
                    continue;
                }
                self.step(s, row);
            }
        }
        self.remember_completed(&batch);
        if let Err(e) = batch.compact() {
            Self::fail_batch(&mut batch, &e.to_string());
        }
        let Some(first) = batch.groups.first() else {
            return;
        };
        let elite = first.elite.clone();
        // A batch emptied by a failure this step is skipped (it is dropped after the step).
        let home = self.batches.iter_mut().find(|b| {
            b.factored == factored
                && b.groups
                    .first()
                    .is_some_and(|g| factored || g.elite == elite)
        });
        match home {
            Some(home) => {
                if let Err(e) = home.join(batch) {
                    Self::fail_batch(home, &e.to_string());
                }
            }
            None => self.batches.push(batch),
        }
    }

    /// The log-probability of each prompt token after the ones before it, and the `top`
    /// most likely tokens there: a forward pass of its own over the prompt (the batched
    /// prefill keeps only the last position's logits), in chunks, so that the logits held
    /// at once stay at [`ECHO_CHUNK`] positions.
    fn prompt_logprobs(&self, model: &Llama, prompt: &[u32], top: usize) -> Result<PromptLogprobs> {
        let mut cache = model.new_cache(1, prompt.len());
        let mut rest = Vec::with_capacity(prompt.len().saturating_sub(1));
        for (c, chunk) in prompt.chunks(ECHO_CHUNK).enumerate() {
            let logits = (|| -> swarm_model::Result<Vec<Vec<f32>>> {
                let input = candle_core::Tensor::new(chunk, model.device())?.unsqueeze(0)?;
                let logits = model.forward(&input, &mut cache)?.squeeze(0)?;
                Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
            })()?;
            for (j, row) in logits.iter().enumerate() {
                if let Some(&next) = prompt.get(c * ECHO_CHUNK + j + 1) {
                    rest.push(self.logprob(row, next, top)?);
                }
            }
        }
        Ok(PromptLogprobs {
            first_token: prompt
                .first()
                .map(|&t| self.tokens.bytes(t))
                .unwrap_or_default(),
            rest,
        })
    }

    /// `token`'s log-probability at this step and the `top` most likely tokens, as bytes.
    fn logprob(&self, logits: &[f32], token: u32, top: usize) -> Result<TokenLogprob> {
        let l = swarm_model::token_logprobs(logits, token, top)?;
        let bytes = |id: u32| self.tokens.bytes(id);
        Ok(TokenLogprob {
            bytes: bytes(l.token),
            logprob: l.logprob,
            top: l
                .top
                .into_iter()
                .map(|(id, logprob)| TopLogprob {
                    bytes: bytes(id),
                    logprob,
                })
                .collect(),
        })
    }

    /// Samples `seq`'s next token from its logits and reports the text it makes final.
    fn step(&self, seq: &mut Seq, logits: &[f32]) {
        let adjusted = seq.adjustments.as_ref().map(|a| {
            let mut row = logits.to_vec();
            a.apply(&mut row, &seq.tokens);
            row
        });
        let for_sampling = adjusted.as_deref().unwrap_or(logits);
        let sampled = match &seq.guide {
            None => seq.sampler.sample(for_sampling).map(Some),
            Some(guide) => seq
                .sampler
                .sample_allowed(for_sampling, |id| self.tokens.allowed(guide, id)),
        };
        let token = match sampled {
            Ok(Some(t)) => t,
            Ok(None) => {
                let _ = seq.tx.send(Event::Failed(Failure::Internal(
                    "guided decoding (JSON mode, tool calls): no token of the vocabulary \
                     continues the answer as it must go on"
                        .to_string(),
                )));
                seq.done = true;
                return;
            }
            Err(e) => {
                let _ = seq.tx.send(Event::Failed(Failure::Internal(e.to_string())));
                seq.done = true;
                return;
            }
        };
        // The token was checked; feeding it cannot fail.
        let end_of_turn = self.stop_ids.contains(&token);
        // Special tokens are not text: the answer's text, which the guide reads, skips them.
        let guide_complete = !end_of_turn
            && seq.guide.as_mut().is_some_and(|guide| {
                if !self.tokens.is_special(token) {
                    guide.push(&self.tokens.bytes(token));
                }
                guide.is_complete()
            });
        let logprobs = match seq.logprobs {
            Some(top) if !end_of_turn => match self.logprob(logits, token, top) {
                Ok(l) => vec![l],
                Err(e) => {
                    let _ = seq.tx.send(Event::Failed(Failure::Internal(e.to_string())));
                    seq.done = true;
                    return;
                }
            },
            _ => Vec::new(),
        };
        seq.tokens.push(token);
        seq.next = token;
        let mut finish = None;
        let piece = if end_of_turn {
            finish = Some(FinishReason::Stop);
            seq.text.finish()
        } else {
            let decoded = match self.tokenizer.decode(&seq.tokens, true) {
                Ok(t) => t,
                Err(e) => {
                    let _ = seq.tx.send(Event::Failed(Failure::Internal(e.to_string())));
                    seq.done = true;
                    return;
                }
            };
            let (mut piece, stopped) = seq.text.push(decoded);
            if stopped {
                finish = Some(FinishReason::Stop);
            } else if guide_complete {
                // The object is closed, or the one call made: nothing may follow.
                finish = Some(FinishReason::Stop);
                piece.push_str(&seq.text.finish());
            } else if seq.tokens.len() >= seq.max_new
                || seq.prompt.len() + seq.tokens.len() >= self.max_positions
            {
                finish = Some(FinishReason::Length);
                piece.push_str(&seq.text.finish());
            }
            piece
        };
        let _ = seq.tx.send(Event::Text {
            text: piece,
            tokens: 1,
            logprobs,
        });
        if let Some(finish) = finish {
            let _ = seq.tx.send(Event::Done {
                finish,
                completion_tokens: seq.tokens.len(),
                cached_tokens: seq.cached,
            });
            seq.done = true;
            seq.completed = true;
        }
    }

    /// Keeps the keys and values of `batch`'s rows that completed this step in the prefix
    /// cache (before [`Batch::compact`] drops them): the tokens the row ran, prompt and
    /// answer, which is what the next turn of its conversation begins with.
    fn remember_completed(&mut self, batch: &Batch) {
        let held = batch.cache.seq_lens();
        let mut row = 0;
        for group in &batch.groups {
            for seq in &group.seqs {
                let ran = held.get(row).copied().unwrap_or(0);
                row += 1;
                if !seq.completed || ran > seq.prompt.len() + seq.tokens.len() {
                    continue;
                }
                let tokens: Vec<u32> = seq
                    .prompt
                    .iter()
                    .chain(&seq.tokens)
                    .copied()
                    .take(ran)
                    .collect();
                if !self.prefix.wants(&group.elite, &tokens) {
                    continue;
                }
                match batch.cache.copy_row(row - 1, ran, ran) {
                    Ok(kv) => {
                        let bytes = kv.size_in_bytes();
                        self.prefix.insert(&group.elite, tokens, kv, bytes);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot keep a finished sequence's cache"),
                }
            }
        }
    }

    /// One decode step (one forward pass) for every batch; finished, cancelled and expired
    /// rows leave.
    fn decode_step(&mut self) {
        let now = Instant::now();
        let mut batches = std::mem::take(&mut self.batches);
        for batch in &mut batches {
            for s in batch.seqs_mut() {
                if s.done {
                    continue;
                }
                if s.tx.is_closed() {
                    tracing::debug!(id = %s.request_id, "receiver dropped: sequence cancelled");
                    s.done = true;
                } else if s.deadline.is_some_and(|d| now >= d) {
                    let _ = s.tx.send(Event::Failed(Failure::Timeout));
                    s.done = true;
                }
            }
            if let Err(e) = batch.compact() {
                Self::fail_batch(batch, &e.to_string());
                continue;
            }
            if batch.groups.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = batch.seqs().map(|s| s.next).collect();
            let groups: Vec<RowGroup> = batch
                .groups
                .iter()
                .map(|g| RowGroup::new(&g.model, g.seqs.len()))
                .collect();
            let logits = Llama::decode_grouped(&groups, &tokens, &mut batch.cache)
                .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?));
            drop(groups);
            self.forward_passes += 1;
            match logits {
                Ok(rows) => {
                    if batch.factored {
                        for g in &batch.groups {
                            self.elites
                                .record_decode(&g.elite, g.seqs.len(), tokens.len());
                        }
                    }
                    for (s, row) in batch.seqs_mut().zip(&rows) {
                        self.step(s, row);
                    }
                    self.remember_completed(batch);
                }
                Err(e) => Self::fail_batch(batch, &e.to_string()),
            }
            if let Err(e) = batch.compact() {
                Self::fail_batch(batch, &e.to_string());
            }
        }
        batches.retain(|b| !b.groups.is_empty());
        self.batches = batches;
    }

    /// Fails every job of `batch` (a forward pass or a cache operation failed) and empties
    /// it.
    fn fail_batch(batch: &mut Batch, error: &str) {
        let elites: Vec<&str> = batch.groups.iter().map(|g| g.elite.as_str()).collect();
        tracing::error!(?elites, error, "the batch's requests fail");
        for s in batch.seqs() {
            let _ =
                s.tx.send(Event::Failed(Failure::Internal(error.to_string())));
        }
        batch.groups.clear();
    }
}
