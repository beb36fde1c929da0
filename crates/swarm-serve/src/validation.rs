//! OpenAI requests resolved into [`ValidatedRequest`]: every default applied, every limit
//! checked, every field we do not implement either ignored with a logged warning or refused
//! with a 400 when it would change the meaning of the answer.

use std::sync::Arc;

use serde_json::{Map, Value};
use swarm_model::{ChatMessage, JsonSchema};

use crate::error::ApiError;
use crate::openai::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, PromptIn, StopSequences,
};
use crate::tools::{
    past_call_text, past_calls_text, resolve_functions, resolve_tools, tool_response_text, ToolSet,
};

/// The router's name, and the default when `model` is omitted.
pub const ROUTER_MODEL: &str = "swarm";

/// Which endpoint a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
    /// The Responses API: a chat request in other words (`responses.rs`).
    Responses,
}

impl Endpoint {
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completion => "/v1/completions",
            Endpoint::Responses => "/v1/responses",
        }
    }
}

/// What the model continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Rendered with the model's chat template, generation prompt added.
    Chat(Vec<ChatMessage>),
    /// Raw text, tokenised as is.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// All the text the router classifies (every turn, not only the last).
    pub fn text_for_routing(&self) -> String {
        match self {
            // Every turn, the system prompt too: it often names the skill outright.
            Prompt::Chat(messages) => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            Prompt::Text(text) => text.clone(),
            Prompt::Tokens(_) => String::new(),
        }
    }
}

/// Sampling settings with nothing left to default.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    /// The seed of choice 0; choice `i` uses `seed + i`.
    pub seed: u64,
    /// Report each generated token's log-probability with this many of the most likely
    /// tokens beside it (0: the token's alone); `None`: not asked.
    pub logprobs: Option<usize>,
    /// JSON mode (`response_format` `json_object` or `json_schema`): the answer is one JSON
    /// object (of the schema), every token checked to keep it one.
    pub json: Option<JsonFormat>,
    /// Added to these tokens' logits before sampling (`logit_bias`, each in [-100, 100]).
    pub logit_bias: Vec<(u32, f32)>,
    /// Subtracted from a token's logit once per time it was generated (in [-2, 2]).
    pub frequency_penalty: f32,
    /// Subtracted from a token's logit once it has been generated (in [-2, 2]).
    pub presence_penalty: f32,
    /// Completions' `echo`: the answer starts with the prompt (and, with `logprobs`, lists
    /// the prompt's tokens too). `max_tokens` may then be 0.
    pub echo: bool,
    /// Function calling: the functions the answer may call, and how (`tool_choice`). Calls
    /// are guided as JSON mode is, and read out of the answer by the HTTP layer.
    pub tools: Option<Arc<ToolSet>>,
}

impl SamplingParams {
    /// `max_tokens` tokens at `temperature` from `seed`, everything else as a request that
    /// names nothing more gets it (top-p 1, no stop strings, no log-probabilities, ...).
    pub fn new(max_tokens: usize, temperature: f32, seed: u64) -> Self {
        Self {
            max_tokens,
            temperature,
            top_p: 1.0,
            stop: Vec::new(),
            seed,
            logprobs: None,
            json: None,
            logit_bias: Vec::new(),
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            echo: false,
            tools: None,
        }
    }
}

/// The most alternatives `top_logprobs` (chat) and `logprobs` (completions) may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A request ready for the router and the engine.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub endpoint: Endpoint,
    /// As asked (`swarm` when omitted).
    pub model: String,
    /// What to continue: one chat, or one or more completion prompts (OpenAI's batched
    /// `prompt`). Each gets `n` choices; prompt `p`'s choice `j` has index `p·n + j` and
    /// seed `seed + j`, so a batched prompt answers as it would alone.
    pub prompts: Vec<Prompt>,
    pub params: SamplingParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    /// Fields accepted and ignored (already logged).
    pub ignored: Vec<String>,
}

impl ValidatedRequest {
    /// What the router classifies: every prompt of the request, each with all its turns
    /// (the tools' names and descriptions in place of their system prompt).
    pub fn text_for_routing(&self) -> String {
        let text = self
            .prompts
            .iter()
            .map(Prompt::text_for_routing)
            .collect::<Vec<_>>()
            .join("\n");
        match &self.params.tools {
            Some(tools) => text.replacen(&tools.system_prompt(), &tools.routing_text(), 1),
            None => text,
        }
    }
}

/// The limits validation enforces (from the server's configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: usize,
    /// The largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// The largest `n`.
    pub max_n: usize,
    /// The most choices in one request: prompts (a completion's list of prompts is a batch)
    /// times `n`.
    pub max_choices: usize,
    /// The most characters of prompt text, all prompts together (tokens are checked by the
    /// engine).
    pub max_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_max_tokens: 256,
            max_tokens_limit: 4096,
            max_n: 8,
            max_choices: 32,
            max_prompt_chars: 200_000,
        }
    }
}

/// Fields that would change what the answer means: refused until implemented.
/// (The second item says which values are harmless and accepted.)
/// Whether a value of a refused field is harmless (absent, empty, or the default).
type Harmless = fn(&Value) -> bool;

const REFUSED: &[(&str, Harmless)] = &[
    ("tools", is_empty_list),
    ("tool_choice", |v| v.is_null() || v == "none"),
    ("functions", is_empty_list),
    ("function_call", |v| v.is_null() || v == "none"),
    // Chat reads it (JSON mode); completions have no such field in OpenAI's API.
    ("response_format", |v| v.is_null() || v["type"] == "text"),
    ("best_of", |v| v.is_null() || v == 1),
    ("suffix", |v| v.is_null() || v == ""),
    ("audio", Value::is_null),
    ("modalities", |v| {
        v.is_null() || v.as_array().is_some_and(|a| a.iter().all(|m| m == "text"))
    }),
    ("prediction", Value::is_null),
];

fn is_empty_list(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(|a| a.is_empty())
}

/// Refuses meaning-changing extras, returns the names of the others (logged as ignored).
fn judge_extra(extra: &Map<String, Value>, prefix: &str) -> Result<Vec<String>, ApiError> {
    let mut ignored = Vec::new();
    for (key, value) in extra {
        if let Some((_, harmless)) = REFUSED.iter().find(|(name, _)| name == key) {
            if !harmless(value) {
                return Err(ApiError::unsupported(&format!("{prefix}{key}")));
            }
        } else if !value.is_null() {
            ignored.push(format!("{prefix}{key}"));
        }
    }
    Ok(ignored)
}

fn resolve_model(model: Option<String>) -> Result<String, ApiError> {
    match model {
        None => Ok(ROUTER_MODEL.to_string()),
        Some(m) if m.trim().is_empty() => Ok(ROUTER_MODEL.to_string()),
        Some(m) if m.len() > 256 => Err(ApiError::invalid("model", "`model` is too long")),
        Some(m) => Ok(m),
    }
}

fn resolve_max_tokens(value: Option<u64>, param: &str, limits: &Limits) -> Result<usize, ApiError> {
    match value {
        None => Ok(limits.default_max_tokens),
        Some(0) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be at least 1"),
        )),
        Some(v) if v > limits.max_tokens_limit as u64 => Err(ApiError::invalid(
            param,
            format!(
                "`{param}` is {v}, above this server's limit of {}",
                limits.max_tokens_limit
            ),
        )),
        Some(v) => Ok(v as usize),
    }
}

#[allow(clippy::too_many_arguments)]
fn resolve_common(
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<StopSequences>,
    n: Option<u64>,
    seed: Option<i64>,
    max_tokens: usize,
    limits: &Limits,
) -> Result<(SamplingParams, usize), ApiError> {
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` is {temperature}; it must be between 0 and 2"),
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` is {top_p}; it must be in (0, 1]"),
        ));
    }
    let stop = match stop {
        None => Vec::new(),
        Some(StopSequences::One(s)) => vec![s],
        Some(StopSequences::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            "stop",
            format!("`stop` has {} sequences; at most 4 are allowed", stop.len()),
        ));
    }
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop",
            "`stop` sequences must not be empty",
        ));
    }
    let n = n.unwrap_or(1);
    if n == 0 || n > limits.max_n as u64 {
        return Err(ApiError::invalid(
            "n",
            format!("`n` is {n}; it must be between 1 and {}", limits.max_n),
        ));
    }
    let seed = match seed {
        // Negative seeds are valid in OpenAI's API: keep their bits.
        Some(s) => s as u64,
        None => random_seed(),
    };
    Ok((
        SamplingParams {
            top_p: top_p as f32,
            stop,
            ..SamplingParams::new(max_tokens, temperature as f32, seed)
        },
        n as usize,
    ))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// The text of a message's `content` (a string or text parts).
fn message_text(index: usize, content: &Option<Value>) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part["type"].as_str() {
                    Some("text") => match part["text"].as_str() {
                        Some(t) => text.push_str(t),
                        None => {
                            return Err(ApiError::invalid(
                                format!("{param}[{j}].text"),
                                "a text part needs a string `text`",
                            ))
                        }
                    },
                    Some(other) => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}].type"),
                            format!(
                                "content parts of type `{other}` are not supported; only `text` is"
                            ),
                        ))
                    }
                    None => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}]"),
                            "a content part needs a `type`",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(
            param,
            "`content` must be a string or an array of text parts",
        )),
    }
}

fn resolve_messages(
    messages: Vec<ChatMessageIn>,
) -> Result<(Vec<ChatMessage>, Vec<String>), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut ignored = Vec::new();
    // Whether the last message out is the user turn of tool results (the next result joins
    // it).
    let mut tool_results = false;
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "user" | "assistant" | "tool" => m.role.clone(),
            // `developer` is the newer name of `system`; templates know only the latter.
            "developer" => "system".to_string(),
            // The legacy form of `tool`.
            "function" => "tool".to_string(),
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                    "unknown role `{other}`; expected system, developer, user, assistant or tool"
                ),
                ))
            }
        };
        let mut calls = None;
        for (key, value) in &m.extra {
            match key.as_str() {
                // Empty lists and nulls are what some clients send when there are none.
                "tool_calls" | "function_call" | "audio" if is_empty_list(value) => {}
                "tool_calls" if role == "assistant" => {
                    calls = Some(past_calls_text(i, value)?);
                }
                "function_call" if role == "assistant" => {
                    calls = Some(past_call_text(
                        &format!("messages[{i}].function_call"),
                        value,
                    )?);
                }
                // Results are matched to calls by their order; the id is not needed.
                "tool_call_id" if role == "tool" => {}
                "tool_calls" | "function_call" | "audio" => {
                    return Err(ApiError::unsupported(&format!("messages[{i}].{key}")));
                }
                _ if !value.is_null() => ignored.push(format!("messages[{i}].{key}")),
                _ => {}
            }
        }
        // Only an assistant turn may lack content (a turn of tool calls has none).
        if role != "assistant" && m.content.as_ref().is_none_or(Value::is_null) {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("a `{}` message needs `content`", m.role),
            ));
        }
        let text = message_text(i, &m.content)?;
        if role == "tool" {
            let result = tool_response_text(&text);
            match out.last_mut() {
                Some(last) if tool_results => {
                    last.content.push('\n');
                    last.content.push_str(&result);
                }
                _ => out.push(ChatMessage::user(result)),
            }
            tool_results = true;
            continue;
        }
        tool_results = false;
        let content = match calls {
            Some(calls) if text.is_empty() => calls,
            Some(calls) => format!("{text}\n{calls}"),
            None => text,
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok((out, ignored))
}

/// Lists the functions in the system message (the first message, made one if it is not).
fn add_tools_prompt(messages: &mut Vec<ChatMessage>, tools: &ToolSet) {
    let prompt = tools.system_prompt();
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{prompt}", first.content);
        }
        _ => messages.insert(0, ChatMessage::system(prompt)),
    }
}

fn include_usage(
    stream: bool,
    options: Option<crate::openai::StreamOptions>,
) -> Result<bool, ApiError> {
    match options {
        None => Ok(false),
        Some(o) => {
            if !stream && o.include_usage.is_some() {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options` is only allowed when `stream` is true",
                ));
            }
            Ok(o.include_usage.unwrap_or(false))
        }
    }
}

fn log_ignored(endpoint: Endpoint, ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::warn!(route = endpoint.route(), fields = ?ignored, "request fields accepted and ignored");
    }
}

/// A chat's `logprobs` (whether to report them) and `top_logprobs` (how many alternatives,
/// which needs `logprobs`), as OpenAI reads them.
fn chat_logprobs(logprobs: Option<bool>, top: Option<u64>) -> Result<Option<usize>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs` set to true",
        )),
        (true, top) => Ok(Some(top_logprobs(top.unwrap_or(0), "top_logprobs")?)),
    }
}

/// `logit_bias` (`{"token id": bias}`) and the two penalties, checked as OpenAI documents
/// them; token ids are checked against the vocabulary by the engine.
fn adjustments(
    params: &mut SamplingParams,
    logit_bias: Option<Map<String, Value>>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
) -> Result<(), ApiError> {
    for (key, value) in logit_bias.unwrap_or_default() {
        let id: u32 = key.trim().parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` keys are token ids; {key:?} is not one"),
            )
        })?;
        let bias = value
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    format!(
                        "`logit_bias` of token {id} is {value}; it must be a number in [-100, 100]"
                    ),
                )
            })?;
        params.logit_bias.push((id, bias as f32));
    }
    params.logit_bias.sort_by_key(|&(id, _)| id);
    for (value, param, target) in [
        (
            frequency_penalty,
            "frequency_penalty",
            &mut params.frequency_penalty,
        ),
        (
            presence_penalty,
            "presence_penalty",
            &mut params.presence_penalty,
        ),
    ] {
        let value = value.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&value) {
            return Err(ApiError::invalid(
                param,
                format!("`{param}` is {value}; it must be between -2 and 2"),
            ));
        }
        *target = value as f32;
    }
    Ok(())
}

/// What a JSON-mode answer must be.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonFormat {
    /// Any JSON object (`json_object`).
    Object,
    /// An object of this schema (`json_schema`, compiled).
    Schema(Arc<JsonSchema>),
}

/// What `response_format` asks for: `text` (or nothing) is plain text, `json_object` one
/// JSON object, `json_schema` an object of its `json_schema.schema` (with `strict: true`,
/// the strict subset [`JsonSchema`] compiles, anything else a 400 that names it; without,
/// read leniently: optional properties, narrowing keywords not enforced).
fn json_mode(format: Option<&Value>) -> Result<Option<JsonFormat>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(JsonFormat::Object)),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "response_format",
                        "`response_format.json_schema.schema` is missing",
                    )
                })?;
            // `strict: true` (what the SDK's `parse` sends) is held to the strict subset; a
            // schema without it is read leniently, as OpenAI only tries to follow it.
            let strict = format
                .get("json_schema")
                .and_then(|j| j.get("strict"))
                .and_then(Value::as_bool)
                == Some(true);
            let compiled = if strict {
                JsonSchema::compile(schema)
            } else {
                JsonSchema::compile_lenient(schema)
            }
            .map_err(|e| ApiError::invalid("response_format", format!("`response_format`: {e}")))?;
            Ok(Some(JsonFormat::Schema(Arc::new(compiled))))
        }
        _ => Err(ApiError::invalid(
            "response_format",
            "`response_format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// How many alternatives a request asks for, checked against [`MAX_TOP_LOGPROBS`].
fn top_logprobs(top: u64, param: &str) -> Result<usize, ApiError> {
    if top > MAX_TOP_LOGPROBS as u64 {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` is {top}; it must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    Ok(top as usize)
}

/// Resolves a chat request.
pub fn validate_chat(
    r: ChatCompletionRequest,
    limits: &Limits,
) -> Result<ValidatedRequest, ApiError> {
    let mut ignored = judge_extra(&r.extra, "")?;
    let (mut messages, more) = resolve_messages(r.messages)?;
    ignored.extend(more);
    let tools = resolve_tools(
        r.tools.as_ref(),
        r.tool_choice.as_ref(),
        r.parallel_tool_calls.as_ref(),
    )?;
    let functions = resolve_functions(r.functions.as_ref(), r.function_call.as_ref())?;
    let tools = match (tools, functions) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "functions",
                "`functions` is the legacy form of `tools`; send one of them, not both",
            ))
        }
        (tools, functions) => tools.or(functions),
    };
    if let Some(tools) = &tools {
        add_tools_prompt(&mut messages, tools);
    }
    let chars: usize = messages.iter().map(|m| m.content.len()).sum();
    if chars > limits.max_prompt_chars {
        return Err(ApiError::too_large(
            Some("messages"),
            format!(
                "the messages hold {chars} characters, above this server's limit of {}",
                limits.max_prompt_chars
            ),
        ));
    }
    let max_tokens = match r.max_completion_tokens {
        Some(v) => resolve_max_tokens(Some(v), "max_completion_tokens", limits)?,
        None => resolve_max_tokens(r.max_tokens, "max_tokens", limits)?,
    };
    let (mut params, n) = resolve_common(
        r.temperature,
        r.top_p,
        r.stop,
        r.n,
        r.seed,
        max_tokens,
        limits,
    )?;
    params.logprobs = chat_logprobs(r.logprobs, r.top_logprobs)?;
    params.json = json_mode(r.response_format.as_ref())?;
    if tools.is_some() && params.json.is_some() {
        return Err(ApiError::invalid(
            "response_format",
            "`response_format` asks for JSON and `tools` for function calls; use one of them \
             (or `tool_choice: none`)",
        ));
    }
    params.tools = tools.map(Arc::new);
    adjustments(
        &mut params,
        r.logit_bias,
        r.frequency_penalty,
        r.presence_penalty,
    )?;
    let stream = r.stream.unwrap_or(false);
    let include_usage = include_usage(stream, r.stream_options)?;
    log_ignored(Endpoint::Chat, &ignored);
    Ok(ValidatedRequest {
        endpoint: Endpoint::Chat,
        model: resolve_model(r.model)?,
        prompts: vec![Prompt::Chat(messages)],
        params,
        n,
        stream,
        include_usage,
        user: r.user,
        ignored,
    })
}

/// Resolves a completion request.
pub fn validate_completion(
    r: CompletionRequest,
    limits: &Limits,
) -> Result<ValidatedRequest, ApiError> {
    let ignored = judge_extra(&r.extra, "")?;
    let prompts: Vec<Prompt> = match r.prompt {
        PromptIn::Text(t) => vec![Prompt::Text(t)],
        PromptIn::Texts(v) => v.into_iter().map(Prompt::Text).collect(),
        PromptIn::Tokens(t) => vec![Prompt::Tokens(t)],
        PromptIn::TokenLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    if prompts.len() > limits.max_choices {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` is a list of {} prompts; this server takes at most {} in one request",
                prompts.len(),
                limits.max_choices
            ),
        ));
    }
    let chars: usize = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(t) => t.len(),
            _ => 0,
        })
        .sum();
    if chars > limits.max_prompt_chars {
        let what = if prompts.len() == 1 {
            "the prompt holds".to_string()
        } else {
            format!("the {} prompts hold", prompts.len())
        };
        return Err(ApiError::too_large(
            Some("prompt"),
            format!(
                "{what} {chars} characters, above this server's limit of {}",
                limits.max_prompt_chars
            ),
        ));
    }
    if prompts
        .iter()
        .any(|p| matches!(p, Prompt::Tokens(t) if t.is_empty()))
    {
        return Err(ApiError::invalid(
            "prompt",
            "`prompt` must not be an empty token list",
        ));
    }
    let echo = r.echo.unwrap_or(false);
    // With `echo`, 0 new tokens asks for the prompt alone (its log-probabilities, scored).
    let max_tokens = match r.max_tokens {
        Some(0) if echo => 0,
        value => resolve_max_tokens(value, "max_tokens", limits)?,
    };
    let (mut params, n) = resolve_common(
        r.temperature,
        r.top_p,
        r.stop,
        r.n,
        r.seed,
        max_tokens,
        limits,
    )?;
    params.logprobs = r
        .logprobs
        .map(|top| top_logprobs(top, "logprobs"))
        .transpose()?;
    params.echo = echo;
    adjustments(
        &mut params,
        r.logit_bias,
        r.frequency_penalty,
        r.presence_penalty,
    )?;
    if prompts.len() * n > limits.max_choices {
        return Err(ApiError::invalid(
            "n",
            format!(
                "{} prompts with `n` = {n} ask for {} choices; this server gives at most {} in one request",
                prompts.len(),
                prompts.len() * n,
                limits.max_choices
            ),
        ));
    }
    let stream = r.stream.unwrap_or(false);
    let include_usage = include_usage(stream, r.stream_options)?;
    log_ignored(Endpoint::Completion, &ignored);
    Ok(ValidatedRequest {
        endpoint: Endpoint::Completion,
        model: resolve_model(r.model)?,
        prompts,
        params,
        n,
        stream,
        include_usage,
        user: r.user,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ValidatedRequest, ApiError> {
        validate_chat(serde_json::from_str(body).unwrap(), &Limits::default())
    }

    #[test]
    fn defaults_are_applied() {
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(r.model, "swarm");
        assert_eq!(r.n, 1);
        assert_eq!(r.params.max_tokens, 256);
        assert_eq!(r.params.temperature, 1.0);
        assert!(!r.stream && !r.include_usage);
    }

    #[test]
    fn max_completion_tokens_wins() {
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_completion_tokens":7}"#).unwrap();
        assert_eq!(r.params.max_tokens, 7);
    }

    #[test]
    fn meaning_changing_fields_are_refused() {
        for extra in [
            r#""modalities":["audio"]"#,
            r#""prediction":{"type":"content","content":"x"}"#,
            r#""audio":{"voice":"alloy"}"#,
        ] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
            let e = chat(&body).unwrap_err();
            assert_eq!(e.status.as_u16(), 400, "{extra}");
            assert_eq!(e.code, Some("unsupported_parameter"));
        }
    }

    #[test]
    fn harmless_fields_are_ignored() {
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}],"store":true,"tools":[],"response_format":{"type":"text"},"logprobs":false,"logit_bias":{},"metadata":null}"#).unwrap();
        assert_eq!(r.ignored, vec!["store".to_string()]);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (extra, param) in [
            (r#""temperature":3"#, "temperature"),
            (r#""top_p":0"#, "top_p"),
            (r#""n":0"#, "n"),
            (r#""n":100"#, "n"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":100000"#, "max_tokens"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
        ] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{extra}}}"#);
            let e = chat(&body).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let e = chat(r#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        for message in [r#"{"role":"user"}"#, r#"{"role":"system","content":null}"#] {
            let e = chat(&format!(r#"{{"messages":[{message}]}}"#)).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{message}");
            assert!(e.message.contains("needs `content`"), "{}", e.message);
        }
        let e = chat(r#"{"messages":[{"role":"robot","content":"x"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
    }

    #[test]
    fn logprobs_as_openai_reads_them() {
        let asked = |extra: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
            ))
            .map(|r| r.params.logprobs)
        };
        assert_eq!(asked("").unwrap(), None);
        assert_eq!(asked(r#","logprobs":false"#).unwrap(), None);
        assert_eq!(asked(r#","logprobs":true"#).unwrap(), Some(0));
        assert_eq!(
            asked(r#","logprobs":true,"top_logprobs":20"#).unwrap(),
            Some(20)
        );
        for (extra, param) in [
            (r#","logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#","top_logprobs":2"#, "top_logprobs"),
            (r#","logprobs":false,"top_logprobs":0"#, "top_logprobs"),
        ] {
            let e = asked(extra).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }

        let l = Limits::default();
        let completion = |b: &str| validate_completion(serde_json::from_str(b).unwrap(), &l);
        assert_eq!(
            completion(r#"{"prompt":"x"}"#).unwrap().params.logprobs,
            None
        );
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":0}"#)
                .unwrap()
                .params
                .logprobs,
            Some(0)
        );
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":5}"#)
                .unwrap()
                .params
                .logprobs,
            Some(5)
        );
        let e = completion(r#"{"prompt":"x","logprobs":21}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        let echoed = completion(r#"{"prompt":"x","logprobs":1,"echo":true,"max_tokens":0}"#)
            .unwrap()
            .params;
        assert!(echoed.echo);
        assert_eq!((echoed.max_tokens, echoed.logprobs), (0, Some(1)));
        // Without `echo`, at least one token.
        let e = completion(r#"{"prompt":"x","max_tokens":0}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn logit_bias_and_penalties() {
        let params = |extra: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
            ))
            .map(|r| r.params)
        };
        let p = params(
            r#","logit_bias":{"50256":-100," 7 ":2.5},"frequency_penalty":0.5,"presence_penalty":-2"#,
        )
        .unwrap();
        assert_eq!(p.logit_bias, vec![(7, 2.5), (50256, -100.0)]);
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.5, -2.0));
        let p = params("").unwrap();
        assert!(p.logit_bias.is_empty());
        assert_eq!((p.frequency_penalty, p.presence_penalty), (0.0, 0.0));
        for (extra, param) in [
            (r#","logit_bias":{"x":1}"#, "logit_bias"),
            (r#","logit_bias":{"-1":1}"#, "logit_bias"),
            (r#","logit_bias":{"5":101}"#, "logit_bias"),
            (r#","logit_bias":{"5":"1"}"#, "logit_bias"),
            (r#","frequency_penalty":2.5"#, "frequency_penalty"),
            (r#","presence_penalty":-3"#, "presence_penalty"),
        ] {
            let e = params(extra).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let l = Limits::default();
        let completion = validate_completion(
            serde_json::from_str(r#"{"prompt":"x","logit_bias":{"3":1},"presence_penalty":1}"#)
                .unwrap(),
            &l,
        )
        .unwrap();
        assert_eq!(completion.params.logit_bias, vec![(3, 1.0)]);
        assert_eq!(completion.params.presence_penalty, 1.0);
    }

    #[test]
    fn json_mode_from_response_format() {
        let json = |extra: &str| {
            chat(&format!(
                r#"{{"messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
            ))
            .map(|r| r.params.json)
        };
        assert_eq!(json("").unwrap(), None);
        assert_eq!(json(r#","response_format":null"#).unwrap(), None);
        assert_eq!(json(r#","response_format":{"type":"text"}"#).unwrap(), None);
        assert_eq!(
            json(r#","response_format":{"type":"json_object"}"#).unwrap(),
            Some(JsonFormat::Object)
        );
        let schema = r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}"#;
        let asked = json(&format!(
            r#","response_format":{{"type":"json_schema","json_schema":{{"name":"A","strict":true,"schema":{schema}}}}}"#
        ))
        .unwrap();
        let want = JsonSchema::compile(&serde_json::from_str(schema).unwrap()).unwrap();
        assert_eq!(asked, Some(JsonFormat::Schema(Arc::new(want))));
        // Strict: a keyword it cannot enforce is named, with where it is.
        let email = r#"{"type":"object","properties":{"a":{"type":"string","format":"email"}},"required":["a"]}"#;
        let e = json(&format!(
            r#","response_format":{{"type":"json_schema","json_schema":{{"name":"A","strict":true,"schema":{email}}}}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(
            e.message.contains("#/properties/a") && e.message.contains("format"),
            "{}",
            e.message
        );
        // Not strict: read leniently (`format` not enforced, `b` optional).
        let optional = r#"{"type":"object","properties":{"a":{"type":"string","format":"email"},"b":{"type":"integer"}},"required":["a"]}"#;
        let lenient = json(&format!(
            r#","response_format":{{"type":"json_schema","json_schema":{{"name":"A","schema":{optional}}}}}"#
        ))
        .unwrap();
        let want = JsonSchema::compile_lenient(&serde_json::from_str(optional).unwrap()).unwrap();
        assert_eq!(lenient, Some(JsonFormat::Schema(Arc::new(want))));
        let e = json(r#","response_format":{"type":"json_schema","json_schema":{"name":"A","schema":{"type":"object","properties":{"a":{"oneOf":[{"type":"string"}]}}}}}"#).unwrap_err();
        assert!(e.message.contains("`oneOf`"), "{}", e.message);
        let e = json(r#","response_format":{"type":"json_schema","json_schema":{"name":"A"}}"#)
            .unwrap_err();
        assert!(e.message.contains("schema` is missing"), "{}", e.message);
        let e = json(r#","response_format":{"type":"yaml"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        let e = json(r#","response_format":"json""#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        // Completions have no `response_format` in OpenAI's API.
        let l = Limits::default();
        let e = validate_completion(
            serde_json::from_str(r#"{"prompt":"x","response_format":{"type":"json_object"}}"#)
                .unwrap(),
            &l,
        )
        .unwrap_err();
        assert_eq!(e.code, Some("unsupported_parameter"));
    }

    #[test]
    fn tools_are_listed_and_past_calls_replayed() {
        let body = r#"{"messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":"Weather in Paris and Rome?"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
                {"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Rome\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"18 C"},
            {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"21 C"}]},
            {"role":"user","content":"Thanks"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
            "tool_choice":"auto"}"#;
        let r = chat(body).unwrap();
        assert!(r.ignored.is_empty(), "{:?}", r.ignored);
        let tools = r.params.tools.as_ref().unwrap();
        assert_eq!(tools.functions[0].name, "get_weather");
        let Prompt::Chat(m) = &r.prompts[0] else {
            panic!("a chat")
        };
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        // The two results are one user turn.
        assert_eq!(roles, ["system", "user", "assistant", "user", "user"]);
        assert!(m[0]
            .content
            .starts_with("Be brief.\n\nYou can call functions"));
        assert!(m[0].content.contains("\"name\":\"get_weather\""));
        let routing = r.text_for_routing();
        assert!(
            routing.starts_with("Be brief.\n\nget weather \n"),
            "{routing}"
        );
        assert!(!routing.contains("You can call functions"), "{routing}");
        assert_eq!(
            m[2].content,
            format!(
                "{}\n{}",
                crate::tools::call_text("get_weather", "{\"city\": \"Paris\"}"),
                crate::tools::call_text("get_weather", "{\"city\": \"Rome\"}")
            )
        );
        assert_eq!(
            m[3].content,
            "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n21 C\n</tool_response>"
        );
        // Without a system message, the tools make one; with `none`, nothing is listed.
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required"}"#).unwrap();
        let Prompt::Chat(m) = &r.prompts[0] else {
            panic!("a chat")
        };
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.ends_with("Answer with function calls only."));
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#).unwrap();
        assert!(r.params.tools.is_none());
        assert_eq!(r.prompts[0], Prompt::Chat(vec![ChatMessage::user("hi")]));
    }

    #[test]
    fn legacy_functions_are_tools_with_one_call() {
        let body = r#"{"messages":[
            {"role":"user","content":"Weather in Paris?"},
            {"role":"assistant","content":null,"function_call":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
            {"role":"function","name":"get_weather","content":"18 C"}],
            "functions":[{"name":"get_weather","description":"Weather in a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],
            "function_call":{"name":"get_weather"}}"#;
        let r = chat(body).unwrap();
        let tools = r.params.tools.as_ref().unwrap();
        assert_eq!(tools.api, crate::tools::ToolApi::Functions);
        assert_eq!(tools.choice, crate::tools::ToolChoice::Function(0));
        assert!(!tools.parallel);
        let Prompt::Chat(m) = &r.prompts[0] else {
            panic!("a chat")
        };
        assert_eq!(
            m[2].content,
            crate::tools::call_text("get_weather", "{\"city\": \"Paris\"}")
        );
        assert_eq!(
            (m[3].role.as_str(), m[3].content.as_str()),
            ("user", "<tool_response>\n18 C\n</tool_response>")
        );
        let e = chat(r#"{"messages":[{"role":"user","content":"hi"}],"functions":[{"name":"f"}],"function_call":"required"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("function_call"));
        let e =
            chat(r#"{"messages":[{"role":"user","content":"hi"}],"functions":[{"name":"a b"}]}"#)
                .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("functions[0].name"));
    }

    #[test]
    fn tools_conflicts_and_bad_history_are_refused() {
        let tools = r#""tools":[{"type":"function","function":{"name":"f"}}]"#;
        let e = chat(&format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{tools},"response_format":{{"type":"json_object"}}}}"#)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        // JSON mode with the tools switched off is fine.
        assert!(chat(&format!(r#"{{"messages":[{{"role":"user","content":"hi"}}],{tools},"tool_choice":"none","response_format":{{"type":"json_object"}}}}"#)).is_ok());
        let e = chat(r#"{"messages":[{"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{x"}}]}]}"#).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[0].tool_calls[0].function.arguments")
        );
        let e = chat(r#"{"messages":[{"role":"user","content":"hi","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#).unwrap_err();
        assert_eq!(e.code, Some("unsupported_parameter"));
        let e = chat(&format!(
            r#"{{"messages":[{{"role":"user","content":"hi"}}],{tools},"functions":[{{"name":"f"}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("functions"));
        // Completions have no tools.
        let e = validate_completion(
            serde_json::from_str(&format!(r#"{{"prompt":"hi",{tools}}}"#)).unwrap(),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.code, Some("unsupported_parameter"));
    }

    #[test]
    fn routing_text_holds_every_turn() {
        let r = chat(r#"{"messages":[{"role":"system","content":"S"},{"role":"user","content":"first"},{"role":"assistant","content":"reply"},{"role":"user","content":[{"type":"text","text":"second"}]}]}"#).unwrap();
        assert_eq!(r.text_for_routing(), "S\nfirst\nreply\nsecond");
    }

    #[test]
    fn completion_prompts() {
        let l = Limits::default();
        let ok = |b: &str| validate_completion(serde_json::from_str(b).unwrap(), &l);
        assert_eq!(
            ok(r#"{"prompt":["x"]}"#).unwrap().prompts,
            vec![Prompt::Text("x".into())]
        );
        assert!(ok(r#"{"prompt":"x","echo":true}"#).unwrap().params.echo);
        assert!(
            serde_json::from_str::<CompletionRequest>(r#"{"prompt":"x","echo":"yes"}"#).is_err()
        );
        assert!(ok(r#"{"prompt":"x","stream_options":{"include_usage":true}}"#).is_err());
        assert!(
            ok(r#"{"prompt":"x","stream":true,"stream_options":{"include_usage":true}}"#)
                .unwrap()
                .include_usage
        );
    }

    #[test]
    fn a_list_of_prompts_is_a_batch() {
        let limits = Limits {
            max_choices: 3,
            max_prompt_chars: 13,
            ..Limits::default()
        };
        let ok = |b: &str| validate_completion(serde_json::from_str(b).unwrap(), &limits);
        let r = ok(r#"{"prompt":["select a","ls -l"]}"#).unwrap();
        assert_eq!(
            r.prompts,
            vec![
                Prompt::Text("select a".into()),
                Prompt::Text("ls -l".into())
            ]
        );
        assert_eq!(r.text_for_routing(), "select a\nls -l");
        let r = ok(r#"{"prompt":[[1,2],[3]]}"#).unwrap();
        assert_eq!(
            r.prompts,
            vec![Prompt::Tokens(vec![1, 2]), Prompt::Tokens(vec![3])]
        );
        let e = ok(r#"{"prompt":[]}"#).unwrap_err();
        assert!(e.message.contains("empty list"), "{}", e.message);
        let e = ok(r#"{"prompt":["a","b","c","d"]}"#).unwrap_err();
        assert!(e.message.contains("at most 3"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("prompt"));
        // Prompts times n choices.
        assert_eq!(ok(r#"{"prompt":["a"],"n":3}"#).unwrap().n, 3);
        let e = ok(r#"{"prompt":["a","b"],"n":2}"#).unwrap_err();
        assert!(e.message.contains("4 choices"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("n"));
        // The character limit holds for all prompts together.
        let e = ok(r#"{"prompt":["1234567","1234567"]}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 413, "{}", e.message);
        assert!(e.message.contains("the 2 prompts hold 14"), "{}", e.message);
        let e = ok(r#"{"prompt":[[1],[]]}"#).unwrap_err();
        assert!(e.message.contains("empty token list"), "{}", e.message);
    }
}
