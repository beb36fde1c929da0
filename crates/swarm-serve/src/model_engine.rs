//! The real engine: continuous batching over swarm-model's `Llama`, on one scheduler thread.
//!
//! One thread owns all scheduling state (style §11): jobs arrive over a channel; between two
//! decode steps the scheduler admits waiting jobs (a left-padded batched prefill per elite,
//! whose caches [`KvCache::concat`] joins to that elite's running batch), then runs one decode
//! step per elite batch, samples every row with its own seeded sampler and sends the new text
//! down each job's channel. A row whose receiver was dropped (the client went away) or whose
//! deadline passed leaves the batch at the next step ([`KvCache::select_rows`]).
//!
//! Mixed elites are grouped: one batch (and one forward pass per step) per elite with
//! running sequences; the elites' models come from an [`EliteCache`], dense (resident in its
//! LRU) or served from factors, as its [`ServingPolicy`](crate::ServingPolicy) says. The
//! engine tells the cache how many tokens each elite runs, which is what decides when an
//! elite served from factors is worth materialising.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Instant;

use candle_core::DType;
use swarm_model::{ChatTemplate, KvCache, Llama, Sampler, TextStream, Tokenizer};
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineStatus, Event, Failure, FinishReason, GenerateJob};
use crate::error::{Result, ServeError};
use crate::registry::EliteCache;
use crate::validation::Prompt;

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct ModelEngineConfig {
    /// Sequences running at once, all elites together.
    pub max_batch: usize,
    /// Prompt tokens prefilled between two decode steps (at least one job is always
    /// admitted), so that long prompts do not stall the running streams for long.
    pub max_prefill_tokens: usize,
}

impl Default for ModelEngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_prefill_tokens: 2048,
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
    deadline: Option<Instant>,
    /// The token sampled last, to feed at the next decode step.
    next: u32,
    done: bool,
}

/// One elite's running batch: `seqs[i]` is row `i` of `cache`.
struct Batch {
    elite: String,
    model: Arc<Llama>,
    cache: KvCache,
    seqs: Vec<Seq>,
}

struct Scheduler {
    config: ModelEngineConfig,
    elites: EliteCache,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    stop_ids: BTreeSet<u32>,
    max_positions: usize,
    vocab: usize,
    waiting: VecDeque<(String, Seq)>,
    batches: Vec<Batch>,
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
        let s = Self {
            config,
            elites,
            tokenizer: loaded.tokenizer,
            template: loaded.template,
            stop_ids,
            max_positions,
            vocab,
            waiting: VecDeque::new(),
            batches: Vec::new(),
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
        st.batch_size = self.batches.iter().map(|b| b.seqs.len()).sum();
        st.waiting = self.waiting.len();
        st.elites_resident = self.elites.resident();
        st.resident_bytes = self.elites.resident_bytes();
    }

    fn running(&self) -> usize {
        self.batches.iter().map(|b| b.seqs.len()).sum()
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
        let prompt = match &job.prompt {
            Prompt::Chat(messages) => {
                let text = self
                    .template
                    .render(messages, true)
                    .map_err(|e| Failure::Invalid(format!("the chat template failed: {e}")))?;
                self.tokenizer
                    .encode(&text, false)
                    .map_err(|e| internal(&e))?
            }
            Prompt::Text(text) => self
                .tokenizer
                .encode(text, true)
                .map_err(|e| internal(&e))?,
            Prompt::Tokens(ids) => {
                if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
                    return Err(Failure::InvalidToken(bad));
                }
                ids.clone()
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
                deadline: job.deadline,
                next: 0,
                done: false,
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
            let Some((elite, seq)) = self.waiting.pop_front() else {
                break;
            };
            if !admitted.is_empty() && seq.prompt.len() > budget {
                self.waiting.push_front((elite, seq));
                break;
            }
            let running = self.batches.iter().any(|b| b.elite == elite);
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
            budget = budget.saturating_sub(seq.prompt.len());
            free -= 1;
            admitted.push((elite, seq));
        }
        // Jobs passed over keep their place at the front.
        while let Some(job) = passed_over.pop_back() {
            self.waiting.push_front(job);
        }
        // Resident elites first, so that no new elite evicts one just admitted.
        admitted.sort_by_key(|(e, _)| !self.elites.is_resident(e));
        // Group by elite, keeping arrival order within each group.
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
            if let Err(e) = self.prefill(&elite, seqs) {
                tracing::error!(elite, error = %e, "prefill failed");
            }
        }
    }

    fn prefill(&mut self, elite: &str, mut seqs: Vec<Seq>) -> Result<()> {
        let model = match self.elites.get(elite) {
            Ok(m) => m,
            Err(e) => {
                for s in &seqs {
                    let _ = s.tx.send(Event::Failed(Failure::Internal(format!(
                        "cannot materialise elite {elite}: {e}"
                    ))));
                }
                return Err(e);
            }
        };
        let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s.prompt.clone()).collect();
        let capacity = seqs
            .iter()
            .map(|s| s.prompt.len() + s.max_new)
            .max()
            .unwrap_or(0)
            .min(self.max_positions);
        let mut cache = model.new_cache(seqs.len(), capacity);
        let logits = model
            .prefill(&prompts, &mut cache)
            .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?));
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                for s in &seqs {
                    let _ = s.tx.send(Event::Failed(Failure::Internal(e.to_string())));
                }
                return Err(e.into());
            }
        };
        self.elites
            .record_tokens(elite, prompts.iter().map(Vec::len).sum(), 0);
        for (s, row) in seqs.iter_mut().zip(&logits) {
            self.step(s, row);
        }
        let alive: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].done).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if alive.len() < seqs.len() {
            cache.select_rows(&alive)?;
            let mut i = 0;
            seqs.retain(|_| {
                i += 1;
                alive.contains(&(i - 1))
            });
        }
        match self.batches.iter_mut().find(|b| b.elite == elite) {
            Some(batch) => {
                let old = std::mem::replace(&mut batch.cache, model.new_cache(0, 0));
                batch.cache = KvCache::concat(&[old, cache])?;
                batch.seqs.extend(seqs);
                // The elite may have been materialised since the batch began from factors:
                // the batch goes on with the dense model (same function, same cache layout).
                batch.model = model;
            }
            None => self.batches.push(Batch {
                elite: elite.to_string(),
                model,
                cache,
                seqs,
            }),
        }
        Ok(())
    }

    /// Samples `seq`'s next token from its logits and reports the text it makes final.
    fn step(&self, seq: &mut Seq, logits: &[f32]) {
        let token = match seq.sampler.sample(logits) {
            Ok(t) => t,
            Err(e) => {
                let _ = seq.tx.send(Event::Failed(Failure::Internal(e.to_string())));
                seq.done = true;
                return;
            }
        };
        seq.tokens.push(token);
        seq.next = token;
        let mut finish = None;
        let piece = if self.stop_ids.contains(&token) {
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
        });
        if let Some(finish) = finish {
            let _ = seq.tx.send(Event::Done {
                finish,
                completion_tokens: seq.tokens.len(),
            });
            seq.done = true;
        }
    }

    /// One decode step for every elite batch; finished, cancelled and expired rows leave.
    fn decode_step(&mut self) {
        let now = Instant::now();
        let mut batches = std::mem::take(&mut self.batches);
        for batch in &mut batches {
            for s in &mut batch.seqs {
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
            if let Err(e) = Self::compact(batch) {
                self.fail_batch(batch, &e.to_string());
                continue;
            }
            if batch.seqs.is_empty() {
                continue;
            }
            let tokens: Vec<u32> = batch.seqs.iter().map(|s| s.next).collect();
            let logits = batch
                .model
                .decode(&tokens, &mut batch.cache)
                .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?));
            match logits {
                Ok(rows) => {
                    self.elites.record_tokens(&batch.elite, 0, rows.len());
                    for (s, row) in batch.seqs.iter_mut().zip(&rows) {
                        self.step(s, row);
                    }
                }
                Err(e) => self.fail_batch(batch, &e.to_string()),
            }
            if let Err(e) = Self::compact(batch) {
                self.fail_batch(batch, &e.to_string());
            }
        }
        batches.retain(|b| !b.seqs.is_empty());
        self.batches = batches;
    }

    /// Removes finished rows from the batch and its cache.
    fn compact(batch: &mut Batch) -> swarm_model::Result<()> {
        if batch.seqs.iter().all(|s| !s.done) {
            return Ok(());
        }
        let alive: Vec<usize> = (0..batch.seqs.len())
            .filter(|&i| !batch.seqs[i].done)
            .collect();
        if alive.is_empty() {
            batch.seqs.clear();
            return Ok(());
        }
        batch.cache.select_rows(&alive)?;
        batch.seqs.retain(|s| !s.done);
        Ok(())
    }

    fn fail_batch(&self, batch: &mut Batch, error: &str) {
        tracing::error!(elite = %batch.elite, error, "decode failed: the batch's requests fail");
        for s in &batch.seqs {
            let _ =
                s.tx.send(Event::Failed(Failure::Internal(error.to_string())));
        }
        batch.seqs.clear();
    }
}
