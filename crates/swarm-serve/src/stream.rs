//! Streamed answers: the engine's per-choice events merged into OpenAI's server-sent events
//! (`data: {chunk}` lines, an optional usage chunk with empty `choices`, then
//! `data: [DONE]`). An engine failure mid-stream becomes one final error event.
//!
//! The stream owns the request's queue permit and its receivers: when the client goes away,
//! axum drops the stream, the receivers close, and the engine stops those sequences.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::engine::{Event, PromptLogprobs, TokenLogprob};
use crate::logprobs::{chat_logprobs, completion_logprobs, echo_logprobs, TextOffset};
use crate::metrics::Metrics;
use crate::openai::{
    ChatChunkChoice, ChatCompletionChunk, ChatDelta, CompletionChoice, CompletionResponse,
    FunctionCallDelta, ToolCallDelta, Usage,
};
use crate::server::{failure_to_api, CancelGuard};
use crate::tools::{AnswerPiece, ToolApi, ToolCallSplitter};
use crate::validation::Endpoint;

/// What every chunk of one answer shares.
#[derive(Debug, Clone)]
pub struct StreamContext {
    pub id: String,
    pub created: u64,
    pub elite: String,
    pub endpoint: Endpoint,
    pub fingerprint: String,
    pub prompt_tokens: usize,
    /// `n`: choices run per prompt, whose shared prompt usage counts once.
    pub choices_per_prompt: usize,
    pub include_usage: bool,
    /// Whether the request asked for log-probabilities (every text chunk then carries its
    /// tokens').
    pub logprobs: bool,
    /// Whether the answer may call functions, and in which API: its calls are then read
    /// out of its text and sent as `tool_calls` (or the legacy `function_call`).
    pub tools: Option<ToolApi>,
    pub metrics: Arc<Metrics>,
    pub start: Instant,
    pub timeout: Option<Duration>,
}

impl StreamContext {
    fn chat_chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Option<Usage>>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.elite.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn completion_chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> String {
        let chunk = CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.elite.clone(),
            system_fingerprint: self.fingerprint.clone(),
            choices,
            usage,
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    /// `usage: null` on every chunk when usage was asked for (OpenAI does so).
    fn null_usage(&self) -> Option<Option<Usage>> {
        self.include_usage.then_some(None)
    }

    /// A chunk of choice `index`: new text and its tokens' log-probabilities (`offset`: where
    /// the choice's next token starts), or its finish reason.
    fn delta(
        &self,
        index: usize,
        text: Option<String>,
        logprobs: &[TokenLogprob],
        offset: &mut TextOffset,
        finish: Option<&'static str>,
    ) -> String {
        // Text chunks carry log-probabilities when asked for, finish chunks none.
        let with_logprobs = self.logprobs && finish.is_none();
        match self.endpoint {
            Endpoint::Chat | Endpoint::Responses => self.chat_chunk(
                vec![ChatChunkChoice {
                    index: index as u32,
                    delta: ChatDelta {
                        content: text,
                        ..ChatDelta::default()
                    },
                    logprobs: with_logprobs.then(|| chat_logprobs(logprobs)),
                    finish_reason: finish,
                }],
                self.null_usage(),
            ),
            Endpoint::Completion => self.completion_chunk(
                vec![CompletionChoice {
                    index: index as u32,
                    text: text.unwrap_or_default(),
                    logprobs: with_logprobs.then(|| completion_logprobs(logprobs, offset)),
                    finish_reason: finish,
                }],
                None,
            ),
        }
    }

    /// A completion chunk with choice `index`'s echoed prompt (and its tokens'
    /// log-probabilities when asked for).
    fn echo(
        &self,
        index: usize,
        text: String,
        prompt: Option<&PromptLogprobs>,
        offset: &mut TextOffset,
    ) -> String {
        self.completion_chunk(
            vec![CompletionChoice {
                index: index as u32,
                text,
                logprobs: prompt
                    .filter(|_| self.logprobs)
                    .map(|p| echo_logprobs(p, offset)),
                finish_reason: None,
            }],
            None,
        )
    }

    /// A chat chunk with part of choice `index`'s call number `call`: its start (`name`
    /// given) or more of its arguments.
    fn tool_call(
        &self,
        index: usize,
        call: usize,
        name: Option<String>,
        arguments: String,
    ) -> String {
        let delta = match (self.tools, name) {
            (Some(ToolApi::Functions), name) => ChatDelta {
                function_call: Some(FunctionCallDelta { name, arguments }),
                ..ChatDelta::default()
            },
            (_, Some(name)) => ChatDelta {
                tool_calls: Some(vec![ToolCallDelta::start(call, name, arguments)]),
                ..ChatDelta::default()
            },
            (_, None) => ChatDelta {
                tool_calls: Some(vec![ToolCallDelta::arguments(call, arguments)]),
                ..ChatDelta::default()
            },
        };
        self.chat_chunk(
            vec![ChatChunkChoice {
                index: index as u32,
                delta,
                logprobs: None,
                finish_reason: None,
            }],
            self.null_usage(),
        )
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        match self.endpoint {
            Endpoint::Chat | Endpoint::Responses => self.chat_chunk(Vec::new(), Some(Some(usage))),
            Endpoint::Completion => self.completion_chunk(Vec::new(), Some(usage)),
        }
    }
}

/// What a stream counts, and reports to the metrics once it ends, or when its client goes
/// away first (the request is then counted as cancelled, and its tokens all the same).
pub(crate) struct StreamTally {
    metrics: Arc<Metrics>,
    elite: String,
    route: &'static str,
    start: Instant,
    prompt_tokens: usize,
    choices_per_prompt: usize,
    pub completion_tokens: usize,
    /// Prompt tokens the prefix cache served, counted once per prompt as `prompt_tokens` are.
    cached_tokens: usize,
    first_text: bool,
    /// Whether the stream has sent its last event.
    pub ended: bool,
    guard: CancelGuard,
}

impl StreamTally {
    pub fn new(ctx: &StreamContext, request_id: String) -> Self {
        Self {
            metrics: ctx.metrics.clone(),
            elite: ctx.elite.clone(),
            route: ctx.endpoint.route(),
            start: ctx.start,
            prompt_tokens: ctx.prompt_tokens,
            choices_per_prompt: ctx.choices_per_prompt.max(1),
            completion_tokens: 0,
            cached_tokens: 0,
            first_text: true,
            ended: false,
            guard: CancelGuard::new(
                ctx.metrics.clone(),
                request_id,
                ctx.endpoint.route(),
                ctx.elite.clone(),
                ctx.start,
            ),
        }
    }

    /// `tokens` more were generated; the first ones time the first token.
    pub fn text(&mut self, tokens: usize) {
        self.completion_tokens += tokens;
        if std::mem::take(&mut self.first_text) {
            self.metrics
                .first_token(self.route, self.start.elapsed().as_secs_f64());
        }
    }

    /// Choice `index` ended; the prefix cache served `cached_tokens` of its prompt.
    pub fn done(&mut self, index: usize, cached_tokens: usize) {
        if index.is_multiple_of(self.choices_per_prompt) {
            self.cached_tokens += cached_tokens;
        }
    }

    /// The stream's `usage` so far.
    pub fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_tokens as u64,
            self.completion_tokens as u64,
            self.cached_tokens as u64,
        )
    }

    /// The stream ended with `status` (200, or an error's sent as the last event): the
    /// request is counted under it (the 200 of the headers said only that it began), with
    /// its latency to the last event.
    pub fn finish(&mut self, status: u16) {
        self.ended = true;
        self.metrics.tokens(
            &self.elite,
            self.prompt_tokens as u64,
            self.completion_tokens as u64,
        );
        self.guard.count(status);
        tracing::info!(
            elite = %self.elite, completion_tokens = self.completion_tokens,
            seconds = self.start.elapsed().as_secs_f64(), route = self.route, "stream finished"
        );
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        if !self.ended {
            self.metrics.tokens(
                &self.elite,
                self.prompt_tokens as u64,
                self.completion_tokens as u64,
            );
        }
    }
}

struct State {
    ctx: StreamContext,
    merged: SelectAll<BoxStream<'static, (usize, Event)>>,
    pending: VecDeque<SseEvent>,
    remaining: usize,
    /// Per choice, where its next token starts in its text (completions' `text_offset`).
    offsets: Vec<TextOffset>,
    /// Per choice, its calls read out of its text (when the request has tools).
    splitters: Vec<ToolCallSplitter>,
    tally: StreamTally,
    _permit: OwnedSemaphorePermit,
}

impl State {
    /// Turns one engine event into zero or more SSE events.
    fn on_event(&mut self, index: usize, event: Option<Event>) {
        match event {
            Some(Event::Echo { text, logprobs }) => {
                let chunk = self
                    .ctx
                    .echo(index, text, logprobs.as_ref(), &mut self.offsets[index]);
                self.pending.push_back(SseEvent::default().data(chunk));
            }
            Some(Event::Text {
                text,
                tokens,
                logprobs,
            }) => {
                self.tally.text(tokens);
                if self.ctx.tools.is_some() {
                    let pieces = self.splitters[index].push(&text);
                    self.send_pieces(index, pieces, &logprobs);
                } else if !text.is_empty() || (self.ctx.logprobs && !logprobs.is_empty()) {
                    // A token whose text is held back (it may begin a stop string) still
                    // sends its log-probability.
                    let chunk = self.ctx.delta(
                        index,
                        Some(text),
                        &logprobs,
                        &mut self.offsets[index],
                        None,
                    );
                    self.pending.push_back(SseEvent::default().data(chunk));
                }
            }
            Some(Event::Done {
                finish,
                cached_tokens,
                ..
            }) => {
                self.tally.done(index, cached_tokens);
                let mut finish = finish.as_str();
                if let Some(api) = self.ctx.tools {
                    let rest = self.splitters[index].finish();
                    self.send_pieces(index, rest, &[]);
                    let splitter = &self.splitters[index];
                    finish = api.finish_reason(finish, splitter.calls(), splitter.cut());
                }
                let text = match self.ctx.endpoint {
                    Endpoint::Chat | Endpoint::Responses => None,
                    Endpoint::Completion => Some(String::new()),
                };
                let chunk =
                    self.ctx
                        .delta(index, text, &[], &mut self.offsets[index], Some(finish));
                self.pending.push_back(SseEvent::default().data(chunk));
                self.remaining -= 1;
            }
            Some(Event::Started { .. }) => {}
            Some(Event::Failed(f)) => {
                let e = failure_to_api(f, self.ctx.endpoint, self.ctx.timeout);
                self.pending
                    .push_back(SseEvent::default().data(e.body_json()));
                self.tally.finish(e.status.as_u16());
            }
            None => {
                let e = failure_to_api(
                    crate::engine::Failure::Internal("engine dropped a running job".into()),
                    self.ctx.endpoint,
                    None,
                );
                self.pending
                    .push_back(SseEvent::default().data(e.body_json()));
                self.tally.finish(500);
            }
        }
    }
}

impl State {
    /// Choice `index`'s text and calls, as chunks; `logprobs` (its tokens') go with the
    /// first, or alone when all the text is held back.
    fn send_pieces(&mut self, index: usize, pieces: Vec<AnswerPiece>, logprobs: &[TokenLogprob]) {
        let mut logprobs = Some(logprobs).filter(|l| self.ctx.logprobs && !l.is_empty());
        for piece in pieces {
            let chunk = match piece {
                AnswerPiece::Text(text) => self.ctx.delta(
                    index,
                    Some(text),
                    logprobs.take().unwrap_or_default(),
                    &mut self.offsets[index],
                    None,
                ),
                // The legacy API has one call (the guide writes no more; this keeps the
                // stream equal to the plain answer whatever the engine).
                AnswerPiece::CallStart { index: call, .. }
                | AnswerPiece::Arguments { index: call, .. }
                    if self.ctx.tools == Some(ToolApi::Functions) && call > 0 =>
                {
                    continue
                }
                AnswerPiece::CallStart {
                    index: call,
                    name,
                    arguments,
                } => self.ctx.tool_call(index, call, Some(name), arguments),
                AnswerPiece::Arguments { index: call, text } => {
                    self.ctx.tool_call(index, call, None, text)
                }
            };
            self.pending.push_back(SseEvent::default().data(chunk));
        }
        if let Some(logprobs) = logprobs {
            let chunk = self.ctx.delta(
                index,
                Some(String::new()),
                logprobs,
                &mut self.offsets[index],
                None,
            );
            self.pending.push_back(SseEvent::default().data(chunk));
        }
    }
}

/// The SSE response for a request whose jobs have all started.
pub fn sse_response(
    ctx: StreamContext,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    permit: OwnedSemaphorePermit,
    request_id: String,
) -> Response {
    let n = receivers.len();
    let mut merged = SelectAll::new();
    for (index, rx) in receivers.into_iter().enumerate() {
        // Each receiver yields its events and ends when the engine drops the sender; if all
        // end while a choice has not finished, the engine lost a job (an error event).
        let s = stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|e| ((index, e), rx))
        })
        .boxed();
        merged.push(s);
    }
    let mut pending = VecDeque::new();
    if ctx.endpoint != Endpoint::Completion {
        for i in 0..n {
            let chunk = ctx.chat_chunk(
                vec![ChatChunkChoice {
                    index: i as u32,
                    delta: ChatDelta {
                        role: Some("assistant"),
                        content: Some(String::new()),
                        ..ChatDelta::default()
                    },
                    logprobs: None,
                    finish_reason: None,
                }],
                ctx.null_usage(),
            );
            pending.push_back(SseEvent::default().data(chunk));
        }
    }
    let state = State {
        tally: StreamTally::new(&ctx, request_id),
        ctx,
        merged,
        pending,
        remaining: n,
        offsets: vec![TextOffset::default(); n],
        splitters: (0..n).map(|_| ToolCallSplitter::new()).collect(),
        _permit: permit,
    };
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.tally.ended {
                return None;
            }
            if st.remaining == 0 {
                if st.ctx.include_usage {
                    let usage = st.tally.usage();
                    st.pending
                        .push_back(SseEvent::default().data(st.ctx.usage_chunk(usage)));
                }
                st.pending.push_back(SseEvent::default().data("[DONE]"));
                st.tally.finish(200);
                continue;
            }
            match st.merged.next().await {
                Some((index, event)) => st.on_event(index, Some(event)),
                None => st.on_event(0, None),
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
