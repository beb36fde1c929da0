//! Routes, middleware and handlers: the HTTP layer over an [`Engine`].
//!
//! A generation request goes routes -> [`crate::openai`] wire types -> [`crate::validation`]
//! -> [`Router`] -> the bounded queue (a semaphore: `try_acquire` or 429) -> the engine, one
//! job per choice. Handlers stay short; the SSE state machine lives in [`crate::stream`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use crate::engine::{Engine, Event, Failure, GenerateJob, PromptLogprobs, TokenLogprob};
use crate::error::ApiError;
use crate::logprobs::{chat_logprobs, completion_logprobs, echo_logprobs, TextOffset};
use crate::metrics::Metrics;
use crate::openai::{
    ChatChoice, ChatCompletionRequest, ChatCompletionResponse, ChatMessageOut, CompletionChoice,
    CompletionLogprobs, CompletionRequest, CompletionResponse, ModelList, Usage,
};
use crate::router::Router;
use crate::stream::{sse_response, StreamContext};
use crate::validation::{self, Endpoint, Limits, ValidatedRequest};

/// The header naming the elite that served a request.
pub const ELITE_HEADER: &str = "x-swarm-elite";
/// The request id header, echoed (or generated).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Server settings with nothing left to default.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted bearer keys; empty means no authentication.
    pub api_keys: Vec<String>,
    /// Request body limit in bytes (beyond: 413).
    pub body_limit: usize,
    /// Allowed CORS origins; `*` allows any; empty disables CORS headers.
    pub cors_origins: Vec<String>,
    /// Requests admitted at once, running or waiting (beyond: 429).
    pub queue_capacity: usize,
    /// Per-request limit (beyond: 504, or an error event in a stream).
    pub request_timeout: Option<Duration>,
    pub limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            body_limit: 2 << 20,
            cors_origins: Vec::new(),
            queue_capacity: 256,
            request_timeout: Some(Duration::from_secs(300)),
            limits: Limits::default(),
        }
    }
}

/// Shared state of every handler: a `Clone` struct of `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub config: Arc<ServerConfig>,
    queue: Arc<Semaphore>,
    draining: Arc<AtomicBool>,
    fingerprint: Arc<str>,
}

impl AppState {
    pub fn new(engine: Arc<dyn Engine>, router: Router, config: ServerConfig) -> Self {
        let queue = Arc::new(Semaphore::new(config.queue_capacity));
        let fingerprint = format!("swarm-{}", env!("CARGO_PKG_VERSION"));
        Self {
            engine,
            router: Arc::new(router),
            metrics: Arc::new(Metrics::new()),
            config: Arc::new(config),
            queue,
            draining: Arc::new(AtomicBool::new(false)),
            fingerprint: fingerprint.into(),
        }
    }

    /// Requests admitted and not finished.
    pub fn queue_depth(&self) -> usize {
        self.config
            .queue_capacity
            .saturating_sub(self.queue.available_permits())
    }

    /// Refuse new generation requests (503) and ask the engine to drain.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.engine.begin_drain();
    }
}

/// The request id of the current request (an extension set by the middleware).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The elite that served a response (an extension read by the metrics middleware).
#[derive(Debug, Clone)]
pub struct ServedBy(pub String);

/// Marks a streamed response: the stream records its own latency when it ends.
#[derive(Debug, Clone, Copy)]
pub struct Streamed;

/// A JSON body whose rejections (malformed, too large) use the OpenAI envelope. The content
/// type is not checked: `curl -d` sends form-encoded headers with JSON bodies.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(None, "the request body is larger than this server's limit")
            } else {
                ApiError::bad_body(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_body(format!("invalid JSON body: {e}")))
    }
}

/// The application: routes, then (inner to outer) body limit, auth, CORS, metrics, request id.
pub fn app(state: AppState) -> axum::Router {
    let cors = cors_layer(&state.config.cors_origins);
    let api = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route(
            "/v1/responses/{id}",
            get(stored_response).delete(stored_response),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|req: Request| async move { ApiError::route_not_found(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let api = match cors {
        Some(cors) => api.layer(cors),
        None => api,
    };
    api.layer(middleware::from_fn_with_state(
        state.clone(),
        record_metrics,
    ))
    .layer(middleware::from_fn(request_id))
    .with_state(state)
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([
            HeaderName::from_static(ELITE_HEADER),
            HeaderName::from_static(REQUEST_ID_HEADER),
        ]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(Any));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(layer.allow_origin(AllowOrigin::list(list)))
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_request_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("req-{:x}{:06x}", nanos >> 20, n & 0xff_ffff)
}

/// Echoes a sane `x-request-id` or makes one; every log line of the request carries it.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

fn metric_route(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/responses" => "/v1/responses",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p if p.starts_with("/v1/responses/") => "/v1/responses/{id}",
        _ => "other",
    }
}

async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = metric_route(req.uri().path());
    let start = Instant::now();
    let response = next.run(req).await;
    let elite = response
        .extensions()
        .get::<ServedBy>()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    if response.extensions().get::<Streamed>().is_none() {
        state.metrics.request(
            route,
            response.status().as_u16(),
            &elite,
            start.elapsed().as_secs_f64(),
        );
    }
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer <key>` on everything but `/health` and `/ready`.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let keys = &state.config.api_keys;
    let open = matches!(req.uri().path(), "/health" | "/ready") || req.method() == Method::OPTIONS;
    if keys.is_empty() || open {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        None => ApiError::unauthorized("No API key given: send `Authorization: Bearer <key>`")
            .into_response(),
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("Incorrect API key provided").into_response(),
    }
}

async fn health() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let status = state.engine.status();
    if state.draining.load(Ordering::SeqCst) {
        return ApiError::unavailable("The server is shutting down").into_response();
    }
    if !status.ready {
        return ApiError::unavailable("The swarm is still loading").into_response();
    }
    Json(serde_json::json!({"status": "ready", "elites": state.router.swarm().elites.len()}))
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(
        state.queue_depth(),
        state.config.queue_capacity,
        &state.engine.status(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".to_string(),
        data: state.router.model_cards(),
    })
}

async fn get_model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    state
        .router
        .model_cards()
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| Json(c).into_response())
        .ok_or_else(|| ApiError::model_not_found(&id))
}

async fn chat_completions(
    State(state): State<AppState>,
    axum::Extension(id): axum::Extension<RequestId>,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let request = validation::validate_chat(body, &state.config.limits)?;
    generate(state, id.0, request, None).await
}

async fn responses(
    State(state): State<AppState>,
    axum::Extension(id): axum::Extension<RequestId>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let (chat, echo) = crate::responses::to_chat_request(body)?;
    let mut request =
        validation::validate_chat(chat, &state.config.limits).map_err(|e| echo.name_fields(e))?;
    request.endpoint = Endpoint::Responses;
    generate(state, id.0, request, Some(echo)).await
}

async fn completions(
    State(state): State<AppState>,
    axum::Extension(id): axum::Extension<RequestId>,
    ApiJson(body): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let request = validation::validate_completion(body, &state.config.limits)?;
    generate(state, id.0, request, None).await
}

/// `GET`/`DELETE /v1/responses/{id}`: nothing is stored, so every id is unknown.
async fn stored_response(axum::extract::Path(id): axum::extract::Path<String>) -> ApiError {
    ApiError::response_not_found(&id)
}

/// An engine failure as the client sees it.
pub fn failure_to_api(failure: Failure, endpoint: Endpoint, timeout: Option<Duration>) -> ApiError {
    let param = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Completion => "prompt",
        Endpoint::Responses => "input",
    };
    match failure {
        Failure::PromptTooLong { tokens, limit } => ApiError::too_large(
            Some(param),
            format!(
                "the prompt has {tokens} tokens; this model's context takes at most {limit} \
                 (an answer that reaches the context's end stops there, finish_reason `length`)"
            ),
        ),
        Failure::Invalid(m) => ApiError::invalid(param, m),
        Failure::InvalidField { param, message } => ApiError::invalid(param, message),
        Failure::InvalidToken(t) => {
            ApiError::invalid("prompt", format!("token id {t} is not in the vocabulary"))
        }
        Failure::Timeout => ApiError::timeout(timeout.map(|t| t.as_secs_f64()).unwrap_or_default()),
        Failure::Unavailable(m) => ApiError::unavailable(m),
        Failure::Internal(m) => ApiError::internal(m),
    }
}

/// Counts a request once, under its route and elite, with its latency: under the status
/// it ended with ([`CancelGuard::count`]), or as cancelled, status 499, if it is dropped
/// before (the client went away).
pub(crate) struct CancelGuard {
    metrics: Arc<Metrics>,
    /// Set once the request is counted, or left to a caller that counts it otherwise (the
    /// metrics middleware counts the answers that are not streamed).
    pub finished: bool,
    request_id: String,
    route: &'static str,
    elite: String,
    start: Instant,
}

/// The status an abandoned request is counted under: nginx's "client closed request".
pub(crate) const CLIENT_CLOSED_REQUEST: u16 = 499;

impl CancelGuard {
    pub fn new(
        metrics: Arc<Metrics>,
        request_id: String,
        route: &'static str,
        elite: String,
        start: Instant,
    ) -> Self {
        Self {
            metrics,
            finished: false,
            request_id,
            route,
            elite,
            start,
        }
    }

    /// Counts the request under `status`, with its latency until now.
    pub fn count(&mut self, status: u16) {
        self.finished = true;
        self.metrics.request(
            self.route,
            status,
            &self.elite,
            self.start.elapsed().as_secs_f64(),
        );
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            tracing::info!(id = %self.request_id, "client went away: generation cancelled");
            self.metrics.cancelled();
            self.count(CLIENT_CLOSED_REQUEST);
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Route, admit, submit one job per choice, then answer at once or as a stream. `echo`:
/// what a Responses API answer repeats of its request.
async fn generate(
    state: AppState,
    request_id: String,
    request: ValidatedRequest,
    echo: Option<crate::responses::ResponsesEcho>,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("The server is shutting down"));
    }
    if !state.engine.status().ready {
        return Err(ApiError::unavailable("The swarm is still loading"));
    }
    let route = state
        .router
        .route(&request.model, || request.text_for_routing())?;
    if request.model == validation::ROUTER_MODEL {
        state.metrics.routed(&route.elite);
    }
    tracing::info!(
        model = %request.model, elite = %route.elite, mix = ?route.mix, prompts = request.prompts.len(), n = request.n,
        stream = request.stream, user = request.user.as_deref().unwrap_or(""), "routed"
    );
    let permit = state
        .queue
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::queue_full(state.config.queue_capacity))?;
    let timeout = state.config.request_timeout;
    let deadline = timeout.map(|t| start + t);
    let endpoint = request.endpoint;
    // Choice p·n + j is prompt p's j-th, with seed + j: the same as prompt p asked alone.
    let choices = request.prompts.len() * request.n;
    let mut receivers: Vec<mpsc::UnboundedReceiver<Event>> = Vec::with_capacity(choices);
    for prompt in &request.prompts {
        for j in 0..request.n {
            let mut params = request.params.clone();
            params.seed = params.seed.wrapping_add(j as u64);
            let job = GenerateJob {
                request_id: request_id.clone(),
                elite: route.elite.clone(),
                prompt: prompt.clone(),
                params,
                deadline,
            };
            let rx = state
                .engine
                .submit(job)
                .map_err(|f| failure_to_api(f, endpoint, timeout))?;
            receivers.push(rx);
        }
    }
    let mut guard = CancelGuard::new(
        state.metrics.clone(),
        request_id.clone(),
        endpoint.route(),
        route.elite.clone(),
        start,
    );
    // Every job first reports its prompt (or why it was refused): refusals keep their status.
    // Usage counts each prompt once, however many choices it has.
    let mut prompt_tokens = 0usize;
    for (i, rx) in receivers.iter_mut().enumerate() {
        match rx.recv().await {
            Some(Event::Started { prompt_tokens: p }) => {
                if i % request.n == 0 {
                    prompt_tokens += p;
                }
            }
            Some(Event::Failed(f)) => {
                guard.finished = true;
                return Err(failure_to_api(f, endpoint, timeout));
            }
            Some(other) => {
                guard.finished = true;
                return Err(ApiError::internal(format!(
                    "engine sent {other:?} before Started"
                )));
            }
            None => {
                guard.finished = true;
                return Err(ApiError::internal(
                    "engine dropped a job before starting it",
                ));
            }
        }
    }
    let ctx = StreamContext {
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{request_id}"),
            Endpoint::Completion => format!("cmpl-{request_id}"),
            Endpoint::Responses => format!("resp_{request_id}"),
        },
        created: unix_now(),
        elite: route.elite.clone(),
        endpoint,
        fingerprint: state.fingerprint.to_string(),
        prompt_tokens,
        choices_per_prompt: request.n,
        include_usage: request.include_usage,
        logprobs: request.params.logprobs.is_some(),
        tools: request.params.tools.as_ref().map(|t| t.api),
        metrics: state.metrics.clone(),
        start,
        timeout,
    };
    if request.stream {
        guard.finished = true;
        let mut response = match endpoint {
            Endpoint::Responses => crate::responses::sse_response(
                ctx,
                echo.unwrap_or_default(),
                receivers,
                permit,
                request_id,
            ),
            Endpoint::Chat | Endpoint::Completion => {
                sse_response(ctx, receivers, permit, request_id)
            }
        };
        set_elite(&mut response, &route.elite);
        // The stream counts the request when it ends: its status may still turn to an
        // error's, and its latency runs to the last byte.
        response.extensions_mut().insert(Streamed);
        return Ok(response);
    }
    let collect = collect_all(&ctx, receivers);
    let result = match deadline {
        // The engine enforces the deadline; this is the backstop if it cannot.
        Some(d) => tokio::time::timeout_at((d + Duration::from_secs(5)).into(), collect)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => collect.await,
    };
    guard.finished = true;
    drop(permit);
    let collected = match result {
        Ok(collected) => collected,
        Err(failure) => {
            // The elite ran: its timeout or failure is counted under it, and named.
            let mut response = failure_to_api(failure, endpoint, timeout).into_response();
            set_elite(&mut response, &route.elite);
            return Ok(response);
        }
    };
    let usage = Usage::new(
        prompt_tokens as u64,
        collected.completion_tokens as u64,
        collected.cached_tokens as u64,
    );
    let wants_logprobs = request.params.logprobs.is_some();
    state
        .metrics
        .tokens(&route.elite, usage.prompt_tokens, usage.completion_tokens);
    let mut response = match endpoint {
        Endpoint::Responses => {
            let echo = echo.unwrap_or_default();
            let answer = collected.texts.into_iter().next().unwrap_or_default();
            let finish = collected.finishes.first().copied().unwrap_or("stop");
            let tools = request.params.tools.is_some();
            Json(
                crate::responses::ResponseObject {
                    id: &ctx.id,
                    created_at: ctx.created,
                    model: &route.elite,
                    echo: &echo,
                    output: crate::responses::output_items(&ctx.id, &answer, tools),
                    finish: Some(finish),
                    usage: Some(usage),
                }
                .to_json(),
            )
            .into_response()
        }
        Endpoint::Chat => Json(ChatCompletionResponse {
            id: ctx.id.clone(),
            object: "chat.completion",
            created: ctx.created,
            model: route.elite.clone(),
            choices: collected
                .texts
                .into_iter()
                .zip(collected.finishes)
                .zip(&collected.logprobs)
                .enumerate()
                .map(|(i, ((answer, finish), logprobs))| {
                    let api = request.params.tools.as_ref().map(|t| t.api);
                    let (message, finish_reason) = ChatMessageOut::answer(answer, api, finish);
                    ChatChoice {
                        index: i as u32,
                        finish_reason,
                        message,
                        logprobs: wants_logprobs.then(|| chat_logprobs(logprobs)),
                    }
                })
                .collect(),
            usage,
            system_fingerprint: ctx.fingerprint.clone(),
        })
        .into_response(),
        Endpoint::Completion => Json(CompletionResponse {
            id: ctx.id.clone(),
            object: "text_completion",
            created: ctx.created,
            model: route.elite.clone(),
            system_fingerprint: ctx.fingerprint.clone(),
            choices: collected
                .texts
                .into_iter()
                .zip(collected.finishes)
                .zip(collected.logprobs.iter().zip(&collected.prompt_logprobs))
                .enumerate()
                .map(
                    |(i, ((text, finish), (logprobs, prompt)))| CompletionChoice {
                        index: i as u32,
                        text,
                        logprobs: wants_logprobs.then(|| {
                            let mut offset = TextOffset::default();
                            let mut all = match prompt {
                                Some(p) => echo_logprobs(p, &mut offset),
                                None => CompletionLogprobs::default(),
                            };
                            all.append(completion_logprobs(logprobs, &mut offset));
                            all
                        }),
                        finish_reason: Some(finish),
                    },
                )
                .collect(),
            usage: Some(usage),
        })
        .into_response(),
    };
    set_elite(&mut response, &route.elite);
    Ok(response)
}

fn set_elite(response: &mut Response, elite: &str) {
    if let Ok(v) = HeaderValue::from_str(elite) {
        response.headers_mut().insert(ELITE_HEADER, v);
    }
    response
        .extensions_mut()
        .insert(ServedBy(elite.to_string()));
}

/// Every choice read to its end, in order.
struct Collected {
    texts: Vec<String>,
    finishes: Vec<&'static str>,
    /// Per choice, its tokens' log-probabilities (empty unless asked for).
    logprobs: Vec<Vec<TokenLogprob>>,
    /// Per choice, the echoed prompt's tokens, when `echo` and `logprobs` were asked for.
    prompt_logprobs: Vec<Option<PromptLogprobs>>,
    completion_tokens: usize,
    /// Prompt tokens the prefix cache served, counted once per prompt.
    cached_tokens: usize,
}

/// Reads every choice to its end; the first failure fails the request.
async fn collect_all(
    ctx: &StreamContext,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
) -> Result<Collected, Failure> {
    let mut out = Collected {
        texts: Vec::with_capacity(receivers.len()),
        finishes: Vec::with_capacity(receivers.len()),
        logprobs: Vec::with_capacity(receivers.len()),
        prompt_logprobs: Vec::with_capacity(receivers.len()),
        completion_tokens: 0,
        cached_tokens: 0,
    };
    let mut first = true;
    // Choices run concurrently in the engine; reading them in order only orders the waits.
    for (index, mut rx) in receivers.into_iter().enumerate() {
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut prompt_logprobs = None;
        loop {
            match rx.recv().await {
                Some(Event::Echo {
                    text: prompt,
                    logprobs: l,
                }) => {
                    text.insert_str(0, &prompt);
                    prompt_logprobs = l;
                }
                Some(Event::Text {
                    text: t,
                    logprobs: l,
                    ..
                }) => {
                    if first {
                        first = false;
                        ctx.metrics
                            .first_token(ctx.endpoint.route(), ctx.start.elapsed().as_secs_f64());
                    }
                    text.push_str(&t);
                    logprobs.extend(l);
                }
                Some(Event::Done {
                    finish,
                    completion_tokens,
                    cached_tokens,
                }) => {
                    out.completion_tokens += completion_tokens;
                    if index.is_multiple_of(ctx.choices_per_prompt.max(1)) {
                        out.cached_tokens += cached_tokens;
                    }
                    out.finishes.push(finish.as_str());
                    break;
                }
                Some(Event::Failed(f)) => return Err(f),
                Some(Event::Started { .. }) => {}
                None => return Err(Failure::Internal("engine dropped a running job".into())),
            }
        }
        out.texts.push(text);
        out.logprobs.push(logprobs);
        out.prompt_logprobs.push(prompt_logprobs);
    }
    Ok(out)
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: new generation
/// requests get 503 while running ones (streams included) finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let drain_state = state.clone();
    let app = app(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining running requests");
            drain_state.begin_drain();
        })
        .await
}
