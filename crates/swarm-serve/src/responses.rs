//! OpenAI's Responses API (`POST /v1/responses`) on top of chat completions.
//!
//! A Responses request says what a chat request says in other words: `instructions` is a
//! system turn, `input` the conversation (a string, or items: messages, `function_call`s and
//! their `function_call_output`s), `max_output_tokens`, flat `tools`, `text.format`. It is
//! rewritten into a [`ChatCompletionRequest`] and validated, routed and generated as one; only
//! the answer's shape differs: `output` items (a `message` with `output_text`, and one
//! `function_call` item per call), and in a stream, typed events
//! (`response.output_text.delta`, `response.function_call_arguments.delta`, ...). Nothing is
//! stored: `previous_response_id` is refused, so clients send the whole conversation, as
//! they do with `store: false`.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::engine::Event;
use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, Usage};
use crate::server::failure_to_api;
use crate::stream::{StreamContext, StreamTally};
use crate::tools::{new_call_id, AnswerPiece, ToolCallSplitter};

/// What the response echoes of its request.
#[derive(Debug, Clone, Default)]
pub struct ResponsesEcho {
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub parallel_tool_calls: Value,
    pub text: Value,
    pub metadata: Value,
    pub user: Value,
    /// Where each message of the chat request came from (`instructions`, `input[3]`): errors
    /// about a message name that field.
    pub origins: Vec<String>,
}

impl ResponsesEcho {
    /// An error about the chat request as one about the Responses request: `messages[k]...`
    /// names the field message `k` came from, bare `messages` is `input`, and the chat
    /// fields this API calls otherwise take its names, in `param` and in the message.
    pub fn name_fields(&self, mut e: ApiError) -> ApiError {
        for (chat, responses) in RENAMED {
            e.message = e
                .message
                .replace(&format!("`{chat}`"), &format!("`{responses}`"));
        }
        let Some(param) = e.param.as_deref() else {
            return e;
        };
        if let Some((_, responses)) = RENAMED.iter().find(|(chat, _)| *chat == param) {
            e.param = Some(responses.to_string());
            return e;
        }
        let Some(rest) = param.strip_prefix("messages") else {
            return e;
        };
        let renamed = rest
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .and_then(|(k, tail)| {
                let origin = self.origins.get(k.parse::<usize>().ok()?)?;
                // `instructions` and a string `input` are a string: nothing inside to name.
                Some(if origin.contains('[') {
                    format!("{origin}{tail}")
                } else {
                    origin.clone()
                })
            })
            .unwrap_or_else(|| format!("input{rest}"));
        e.param = Some(renamed);
        e
    }
}

/// Chat fields that [`to_chat_request`] fills from Responses fields of another name.
const RENAMED: [(&str, &str); 3] = [
    ("messages", "input"),
    ("max_completion_tokens", "max_output_tokens"),
    ("response_format", "text.format"),
];

/// Fields that only a server that stores responses, runs them in the background or hosts
/// prompts could honour.
const REFUSED: [(&str, &str); 4] = [
    (
        "previous_response_id",
        "swarm stores no responses: send the whole conversation in `input`",
    ),
    (
        "conversation",
        "swarm stores no conversations: send the whole conversation in `input`",
    ),
    ("background", "background responses are not supported"),
    ("prompt", "stored prompt templates are not supported"),
];

/// Rewrites a Responses request into the chat request that asks the same.
pub fn to_chat_request(body: Value) -> Result<(ChatCompletionRequest, ResponsesEcho), ApiError> {
    let Value::Object(mut body) = body else {
        return Err(ApiError::bad_body("the request body must be a JSON object"));
    };
    for (field, why) in REFUSED {
        match body.get(field) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => return Err(ApiError::invalid(field, why)),
        }
    }
    let mut take = |key: &str| body.remove(key).unwrap_or(Value::Null);
    let instructions = take("instructions");
    let input = take("input");
    let max_output_tokens = take("max_output_tokens");
    let tools = take("tools");
    let tool_choice = take("tool_choice");
    let text = take("text");
    let mut echo = ResponsesEcho {
        instructions: instructions.clone(),
        max_output_tokens: max_output_tokens.clone(),
        temperature: body.get("temperature").cloned().unwrap_or(json!(1.0)),
        top_p: body.get("top_p").cloned().unwrap_or(json!(1.0)),
        tools: if tools.is_null() {
            json!([])
        } else {
            tools.clone()
        },
        tool_choice: if tool_choice.is_null() {
            json!("auto")
        } else {
            tool_choice.clone()
        },
        parallel_tool_calls: body
            .get("parallel_tool_calls")
            .cloned()
            .unwrap_or(json!(true)),
        text: if text.is_null() {
            json!({"format": {"type": "text"}})
        } else {
            text.clone()
        },
        metadata: body.get("metadata").cloned().unwrap_or(json!({})),
        user: body.get("user").cloned().unwrap_or(Value::Null),
        origins: Vec::new(),
    };
    // Fields with a chat meaning of their own that a Responses request uses otherwise.
    for key in [
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "response_format",
        "n",
    ] {
        if body.contains_key(key) {
            return Err(ApiError::invalid(
                key,
                format!("`{key}` is a chat completions field; the Responses API does not take it"),
            ));
        }
    }
    // Log-probabilities come through `include` in this API; not offered here.
    for key in ["top_logprobs", "include"] {
        body.remove(key);
    }
    let mut messages = Vec::new();
    match &instructions {
        Value::Null => {}
        Value::String(s) => {
            messages.push(json!({"role": "system", "content": s}));
            echo.origins.push("instructions".into());
        }
        _ => {
            return Err(ApiError::invalid(
                "instructions",
                "`instructions` must be a string",
            ))
        }
    }
    input_messages(input, &mut messages, &mut echo.origins)?;
    body.insert("messages".into(), Value::Array(messages));
    if !max_output_tokens.is_null() {
        body.insert("max_completion_tokens".into(), max_output_tokens);
    }
    if !tools.is_null() {
        body.insert("tools".into(), chat_tools(tools)?);
    }
    if !tool_choice.is_null() {
        body.insert("tool_choice".into(), chat_tool_choice(tool_choice)?);
    }
    if let Some(format) = text_format(text)? {
        body.insert("response_format".into(), format);
    }
    let request = serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::bad_body(format!("invalid request: {e}")))?;
    Ok((request, echo))
}

/// `input` as chat messages, appended to `messages`.
fn input_messages(
    input: Value,
    messages: &mut Vec<Value>,
    origins: &mut Vec<String>,
) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            messages.push(json!({"role": "user", "content": s}));
            origins.push("input".into());
            return Ok(());
        }
        Value::Array(items) => items,
        Value::Null => return Err(ApiError::invalid("input", "`input` is required")),
        _ => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string or a list of items",
            ))
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let param = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(ApiError::invalid(
                param,
                "each input item must be an object",
            ));
        };
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => {
                let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(format!("{param}.role"), "a message needs a `role`")
                })?;
                let content = message_content(item.get("content"), &param)?;
                messages.push(json!({"role": role, "content": content}));
                origins.push(param);
            }
            Some("function_call") => {
                let field = |key: &str| {
                    item.get(key).and_then(Value::as_str).ok_or_else(|| {
                        ApiError::invalid(
                            format!("{param}.{key}"),
                            format!("a function_call item needs `{key}` (a string)"),
                        )
                    })
                };
                let call = json!({"id": field("call_id")?, "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?}});
                // Calls in a row are one assistant turn, as the model wrote them.
                let joined = messages.last_mut().and_then(|last| {
                    let calls = last.get_mut("tool_calls")?.as_array_mut()?;
                    calls.push(call.clone());
                    Some(())
                });
                if joined.is_none() {
                    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
                    origins.push(param);
                }
            }
            Some("function_call_output") => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}.call_id"),
                        "a function_call_output item needs `call_id` (a string)",
                    )
                })?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(parts @ Value::Array(_)) => {
                        text_of_parts(parts, &format!("{param}.output"))?
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{param}.output"),
                            "a function_call_output item needs `output` (a string)",
                        ))
                    }
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                origins.push(param);
            }
            // A reasoning model's summary of its thoughts: not part of what the model reads.
            Some("reasoning") => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{param}.type"),
                    format!("input items of type `{other}` are not supported (message, function_call and function_call_output are)"),
                ))
            }
        }
    }
    Ok(())
}

/// A message's content: a string, or text parts (`input_text`, `output_text`) joined.
fn message_content(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(parts @ Value::Array(_)) => text_of_parts(parts, &format!("{param}.content")),
        _ => Err(ApiError::invalid(
            format!("{param}.content"),
            "a message needs `content`: a string or a list of text parts",
        )),
    }
}

fn text_of_parts(parts: &Value, param: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.as_array().into_iter().flatten().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, part.get("text").and_then(Value::as_str)) {
            ("input_text" | "output_text" | "text", Some(t)) => text.push_str(t),
            _ => {
                return Err(ApiError::invalid(
                    format!("{param}[{j}]"),
                    format!(
                    "content parts of type `{kind}` are not supported: the elites read text only"
                ),
                ))
            }
        }
    }
    Ok(text)
}

/// Flat tools (`{"type": "function", "name", "description", "parameters", "strict"}`) in
/// the chat form (`{"type": "function", "function": {...}}`).
fn chat_tools(tools: Value) -> Result<Value, ApiError> {
    let Value::Array(tools) = tools else {
        return Err(ApiError::invalid("tools", "`tools` must be a list"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let Value::Object(mut tool) = tool else {
            return Err(ApiError::invalid(
                format!("tools[{i}]"),
                "each tool must be an object",
            ));
        };
        match tool.remove("type").as_ref().and_then(Value::as_str) {
            Some("function") => out.push(json!({"type": "function", "function": Value::Object(tool)})),
            other => {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "tools of type {} are not supported: only `function` (swarm runs no built-in tools)",
                        other.map_or("(none)".to_string(), |t| format!("`{t}`"))
                    ),
                ))
            }
        }
    }
    Ok(Value::Array(out))
}

/// `tool_choice`: the strings as they are, `{"type": "function", "name"}` in the chat form.
fn chat_tool_choice(choice: Value) -> Result<Value, ApiError> {
    match &choice {
        Value::String(_) => Ok(choice),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").cloned().ok_or_else(|| {
                ApiError::invalid("tool_choice.name", "a function `tool_choice` needs `name`")
            })?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// `text.format` as the chat `response_format`: `text`, `json_object`, or `json_schema`
/// with the schema's `name`, `schema` and `strict` beside `type`.
fn text_format(text: Value) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.get("format") else {
        return Ok(None);
    };
    let Value::Object(format) = format else {
        return Err(ApiError::invalid(
            "text.format",
            "`text.format` must be an object",
        ));
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema: Map<String, Value> = format.clone();
            schema.remove("type");
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid(
            "text.format.type",
            "`text.format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// A `message` output item holding `text`.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [output_text_part(text)]})
}

/// An `output_text` content part.
pub fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A `function_call` output item.
pub fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// The id of output item `index` of response `response_id`.
pub fn item_id(response_id: &str, kind: &str, index: usize) -> String {
    let tail = response_id.trim_start_matches("resp_");
    format!("{kind}_{tail}_{index}")
}

/// An answer's output items, in the order it wrote them: each stretch of text a `message`
/// item, each call a `function_call` item (`incomplete` when the answer was cut in it).
pub fn output_items(response_id: &str, answer: &str, tools: bool) -> Vec<Value> {
    let mut builder = OutputBuilder::new(response_id);
    let mut events = Vec::new();
    if tools {
        let mut splitter = ToolCallSplitter::new();
        let mut pieces = splitter.push(answer);
        pieces.extend(splitter.finish());
        for piece in pieces {
            builder.piece(piece, &mut events);
        }
        builder.finish(splitter.cut(), &mut events);
    } else {
        builder.piece(AnswerPiece::Text(answer.to_string()), &mut events);
        builder.finish(false, &mut events);
    }
    builder.items
}

/// The item being written.
enum Open {
    None,
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Turns an answer's pieces into output items and the stream's events about them
/// (`response.output_item.added`, `...delta`, `...done`), the same for a stream and a whole
/// answer.
pub struct OutputBuilder {
    response_id: String,
    /// The finished items.
    pub items: Vec<Value>,
    open: Open,
    /// Whitespace before any other text: dropped when a call follows (as `content` is).
    held: String,
}

impl OutputBuilder {
    pub fn new(response_id: &str) -> Self {
        Self {
            response_id: response_id.to_string(),
            items: Vec::new(),
            open: Open::None,
            held: String::new(),
        }
    }

    /// Adds one piece of the answer; the events it makes go to `events`.
    pub fn piece(&mut self, piece: AnswerPiece, events: &mut Vec<Value>) {
        match piece {
            AnswerPiece::Text(text) => {
                if !matches!(self.open, Open::Message { .. }) {
                    if matches!(self.open, Open::None) && text.trim().is_empty() {
                        self.held.push_str(&text);
                        return;
                    }
                    self.close("completed", events);
                    self.open_message(events);
                }
                let text = std::mem::take(&mut self.held) + &text;
                self.message_delta(text, events);
            }
            AnswerPiece::CallStart {
                name, arguments, ..
            } => {
                self.close("completed", events);
                self.held.clear();
                let index = self.items.len();
                let id = item_id(&self.response_id, "fc", index);
                let call_id = new_call_id();
                events.push(
                    json!({"type": "response.output_item.added", "output_index": index,
                    "item": call_item(&id, &call_id, &name, "", "in_progress")}),
                );
                self.open = Open::Call {
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                };
                self.arguments_delta(arguments, events);
            }
            AnswerPiece::Arguments { text, .. } => self.arguments_delta(text, events),
        }
    }

    /// The answer ended (`cut` in a call's arguments): closes the open item. An answer with
    /// no item at all gets an empty message, as a whole answer does.
    pub fn finish(&mut self, cut: bool, events: &mut Vec<Value>) {
        self.close(if cut { "incomplete" } else { "completed" }, events);
        if self.items.is_empty() {
            self.open_message(events);
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                self.message_delta(held, events);
            }
            self.close("completed", events);
        }
    }

    fn open_message(&mut self, events: &mut Vec<Value>) {
        let index = self.items.len();
        let id = item_id(&self.response_id, "msg", index);
        let mut item = message_item(&id, "", "in_progress");
        item["content"] = json!([]);
        events.push(
            json!({"type": "response.output_item.added", "output_index": index, "item": item}),
        );
        events.push(json!({"type": "response.content_part.added", "item_id": id,
            "output_index": index, "content_index": 0, "part": output_text_part("")}));
        self.open = Open::Message {
            id,
            text: String::new(),
        };
    }

    fn message_delta(&mut self, delta: String, events: &mut Vec<Value>) {
        let index = self.items.len();
        if let Open::Message { id, text } = &mut self.open {
            if delta.is_empty() {
                return;
            }
            text.push_str(&delta);
            events.push(json!({"type": "response.output_text.delta", "item_id": id,
                "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}));
        }
    }

    fn arguments_delta(&mut self, delta: String, events: &mut Vec<Value>) {
        let index = self.items.len();
        if let Open::Call { id, arguments, .. } = &mut self.open {
            if delta.is_empty() {
                return;
            }
            arguments.push_str(&delta);
            events.push(json!({"type": "response.function_call_arguments.delta",
                "item_id": id, "output_index": index, "delta": delta}));
        }
    }

    /// Closes the open item with `status` (a message is always `completed`).
    fn close(&mut self, status: &str, events: &mut Vec<Value>) {
        let index = self.items.len();
        let item = match std::mem::replace(&mut self.open, Open::None) {
            Open::None => return,
            Open::Message { id, text } => {
                events.push(json!({"type": "response.output_text.done", "item_id": id,
                    "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                events.push(json!({"type": "response.content_part.done", "item_id": id,
                    "output_index": index, "content_index": 0, "part": output_text_part(&text)}));
                message_item(&id, &text, "completed")
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
            } => {
                events.push(json!({"type": "response.function_call_arguments.done",
                    "item_id": id, "output_index": index, "name": name, "arguments": arguments}));
                call_item(&id, &call_id, &name, &arguments, status)
            }
        };
        events.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.items.push(item);
    }
}

/// The response object (`object: "response"`).
pub struct ResponseObject<'a> {
    pub id: &'a str,
    pub created_at: u64,
    pub model: &'a str,
    pub echo: &'a ResponsesEcho,
    pub output: Vec<Value>,
    /// `None` while in progress; the engine's finish reason once done.
    pub finish: Option<&'a str>,
    pub usage: Option<Usage>,
}

impl ResponseObject<'_> {
    pub fn to_json(&self) -> Value {
        let (status, incomplete) = match self.finish {
            None => ("in_progress", Value::Null),
            Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
            Some(_) => ("completed", Value::Null),
        };
        let usage = self.usage.map_or(Value::Null, |u| {
            json!({"input_tokens": u.prompt_tokens,
                   "input_tokens_details": {"cached_tokens": u.prompt_tokens_details.cached_tokens},
                   "output_tokens": u.completion_tokens,
                   "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": u.total_tokens})
        });
        let e = self.echo;
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at,
            "status": status, "error": null, "incomplete_details": incomplete,
            "model": self.model, "output": self.output, "usage": usage,
            "instructions": e.instructions, "max_output_tokens": e.max_output_tokens,
            "temperature": e.temperature, "top_p": e.top_p, "tools": e.tools,
            "tool_choice": e.tool_choice, "parallel_tool_calls": e.parallel_tool_calls,
            "text": e.text, "metadata": e.metadata, "user": e.user,
            "previous_response_id": null, "reasoning": null, "store": false,
            "truncation": "disabled",
        })
    }
}

/// The stream of one response: `response.created` and `response.in_progress`, the items'
/// events as the answer is written, then `response.completed` (`response.incomplete` when
/// `max_output_tokens` cut it) with the whole response, or an `error` event. A Responses
/// request has one choice (it takes no `n`): `receivers` holds its one job.
pub fn sse_response(
    ctx: StreamContext,
    echo: ResponsesEcho,
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    permit: OwnedSemaphorePermit,
    request_id: String,
) -> Response {
    let Some(rx) = receivers.into_iter().next() else {
        return ApiError::internal("a Responses request without a job").into_response();
    };
    let mut state = ResponseStream {
        builder: OutputBuilder::new(&ctx.id),
        splitter: ctx.tools.map(|_| ToolCallSplitter::new()),
        tally: StreamTally::new(&ctx, request_id),
        ctx,
        echo,
        rx,
        pending: VecDeque::new(),
        sequence: 0,
        _permit: permit,
    };
    let created = state.response(None);
    state.send(json!({"type": "response.created", "response": created}));
    state.send(json!({"type": "response.in_progress", "response": created}));
    let events = stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), st));
            }
            if st.tally.ended {
                return None;
            }
            let event = st.rx.recv().await;
            st.on_event(event);
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct ResponseStream {
    ctx: StreamContext,
    echo: ResponsesEcho,
    rx: mpsc::UnboundedReceiver<Event>,
    builder: OutputBuilder,
    /// Reads calls out of the text when the request has tools.
    splitter: Option<ToolCallSplitter>,
    pending: VecDeque<SseEvent>,
    sequence: u64,
    tally: StreamTally,
    _permit: OwnedSemaphorePermit,
}

impl ResponseStream {
    fn response(&self, finish: Option<&str>) -> Value {
        ResponseObject {
            id: &self.ctx.id,
            created_at: self.ctx.created,
            model: &self.ctx.elite,
            echo: &self.echo,
            output: self.builder.items.clone(),
            finish,
            usage: finish.map(|_| self.tally.usage()),
        }
        .to_json()
    }

    /// Queues one event, numbered, named after its `type` as OpenAI's are.
    fn send(&mut self, mut event: Value) {
        event["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let name = event["type"].as_str().unwrap_or("message").to_string();
        self.pending
            .push_back(SseEvent::default().event(name).data(event.to_string()));
    }

    fn send_all(&mut self, events: Vec<Value>) {
        for event in events {
            self.send(event);
        }
    }

    fn on_event(&mut self, event: Option<Event>) {
        let mut events = Vec::new();
        match event {
            Some(Event::Text { text, tokens, .. }) => {
                self.tally.text(tokens);
                let pieces = match &mut self.splitter {
                    Some(splitter) => splitter.push(&text),
                    None => vec![AnswerPiece::Text(text)],
                };
                for piece in pieces {
                    self.builder.piece(piece, &mut events);
                }
                self.send_all(events);
            }
            Some(Event::Done {
                finish,
                cached_tokens,
                ..
            }) => {
                self.tally.done(0, cached_tokens);
                let (rest, cut) = match &mut self.splitter {
                    Some(splitter) => (splitter.finish(), splitter.cut()),
                    None => (Vec::new(), false),
                };
                for piece in rest {
                    self.builder.piece(piece, &mut events);
                }
                self.builder.finish(cut, &mut events);
                self.send_all(events);
                let finish = finish.as_str();
                let kind = if finish == "length" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                let response = self.response(Some(finish));
                self.send(json!({"type": kind, "response": response}));
                self.tally.finish(200);
            }
            Some(Event::Started { .. }) | Some(Event::Echo { .. }) => {}
            Some(Event::Failed(f)) => {
                let e = failure_to_api(f, self.ctx.endpoint, self.ctx.timeout);
                self.fail(e);
            }
            None => self.fail(ApiError::internal("engine dropped a running job")),
        }
    }

    fn fail(&mut self, e: ApiError) {
        self.send(json!({"type": "error", "code": e.code, "message": e.message, "param": e.param}));
        self.tally.finish(e.status.as_u16());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chat messages as JSON (as a client would have sent them).
    fn messages_json(messages: &[crate::openai::ChatMessageIn]) -> Value {
        messages
            .iter()
            .map(|m| {
                let mut o = m.extra.clone();
                o.insert("role".into(), json!(m.role));
                o.insert("content".into(), m.content.clone().unwrap_or(Value::Null));
                Value::Object(o)
            })
            .collect()
    }

    fn chat(body: Value) -> Value {
        let (request, _) = to_chat_request(body).unwrap();
        messages_json(&request.messages)
    }

    #[test]
    fn instructions_and_a_string_are_a_system_and_a_user_turn() {
        let messages = chat(json!({"model": "swarm", "instructions": "Be brief.", "input": "Hi"}));
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[0]["content"], "Be brief.");
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[1]["content"], "Hi");
    }

    #[test]
    fn items_become_turns_calls_and_results() {
        let (request, echo) = to_chat_request(json!({
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                             {"type": "input_text", "text": "in Paris?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18 C"},
                {"type": "reasoning", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]}
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "max_output_tokens": 50,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}}
        }))
        .unwrap();
        let messages = messages_json(&request.messages);
        assert_eq!(messages[0]["content"], "Weather in Paris?");
        // Two calls in a row: one assistant turn.
        assert_eq!(messages[1]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(messages[1]["tool_calls"][1]["function"]["name"], "get_time");
        assert_eq!(messages[2]["role"], "tool");
        assert_eq!(messages[2]["tool_call_id"], "call_1");
        assert_eq!(messages[3]["content"], "Sunny.");
        assert_eq!(messages.as_array().unwrap().len(), 4);
        assert_eq!(request.max_completion_tokens, Some(50));
        let tools = request.tools.unwrap();
        assert_eq!(tools[0]["function"]["name"], "get_weather");
        assert_eq!(
            request.tool_choice.unwrap(),
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        let format = request.response_format.unwrap();
        assert_eq!(format["type"], "json_schema");
        assert_eq!(format["json_schema"]["name"], "w");
        assert_eq!(format["json_schema"]["strict"], true);
        assert_eq!(echo.max_output_tokens, 50);
        assert_eq!(echo.tool_choice["name"], "get_weather");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let refused = |body: Value| to_chat_request(body).unwrap_err().param;
        let param = |p: &str| Some(p.to_string());
        assert_eq!(
            refused(json!({"input": "x", "previous_response_id": "resp_1"})),
            param("previous_response_id")
        );
        assert_eq!(
            refused(json!({"input": "x", "background": true})),
            param("background")
        );
        assert_eq!(
            refused(json!({"input": "x", "tools": [{"type": "web_search"}]})),
            param("tools[0].type")
        );
        assert_eq!(
            refused(
                json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]})
            ),
            param("input[0].content[0]")
        );
        assert_eq!(
            refused(json!({"input": [{"type": "item_reference", "id": "x"}]})),
            param("input[0].type")
        );
        assert_eq!(refused(json!({"model": "swarm"})), param("input"));
        assert_eq!(
            refused(json!({"input": "x", "messages": []})),
            param("messages")
        );
        assert_eq!(
            refused(json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]})),
            param("input[0].call_id")
        );
        // Storing is not offered, but asking for it (the API's default) is not an error.
        assert!(to_chat_request(json!({"input": "x", "store": true, "background": false})).is_ok());
    }

    /// Streamed a character at a time, the events add up to the items of the whole answer:
    /// each item announced, then its deltas, then done with what the deltas made.
    #[test]
    fn streamed_events_add_up_to_the_items() {
        let answer = format!(
            "  First.\n{}\nThen {}",
            crate::tools::call_text("f", "{\"a\": [1, \"}\"]}"),
            crate::tools::call_text("g", "{}")
        );
        let whole = output_items("resp_x", &answer, true);
        let mut builder = OutputBuilder::new("resp_x");
        let mut splitter = ToolCallSplitter::new();
        let mut events = Vec::new();
        for c in answer.chars() {
            for piece in splitter.push(&c.to_string()) {
                builder.piece(piece, &mut events);
            }
        }
        for piece in splitter.finish() {
            builder.piece(piece, &mut events);
        }
        builder.finish(splitter.cut(), &mut events);
        // Ids of calls differ run to run; compare everything else.
        let strip = |items: &[Value]| -> Vec<Value> {
            items
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    i.as_object_mut().unwrap().remove("call_id");
                    i
                })
                .collect()
        };
        assert_eq!(strip(&builder.items), strip(&whole));
        let kinds: Vec<&str> = whole.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["message", "function_call", "message", "function_call"]
        );
        assert_eq!(whole[0]["content"][0]["text"], "  First.\n");
        assert_eq!(whole[2]["content"][0]["text"], "Then ");
        let mut built: Vec<String> = vec![String::new(); whole.len()];
        let mut state = vec![""; whole.len()];
        for e in &events {
            let index = e["output_index"].as_u64().unwrap() as usize;
            match e["type"].as_str().unwrap() {
                "response.output_item.added" => {
                    assert_eq!(state[index], "", "{e}");
                    state[index] = "open";
                }
                "response.output_text.delta" | "response.function_call_arguments.delta" => {
                    assert_eq!(state[index], "open", "{e}");
                    built[index].push_str(e["delta"].as_str().unwrap());
                }
                "response.output_item.done" => {
                    assert_eq!(state[index], "open", "{e}");
                    state[index] = "done";
                    let item = &e["item"];
                    let text = item["content"][0]["text"]
                        .as_str()
                        .or(item["arguments"].as_str())
                        .unwrap();
                    assert_eq!(text, built[index]);
                }
                _ => {}
            }
        }
        assert!(state.iter().all(|s| *s == "done"));
        assert_eq!(built[1], "{\"a\": [1, \"}\"]}");
    }

    #[test]
    fn errors_about_messages_name_the_input_item() {
        let (_, echo) = to_chat_request(json!({"instructions": "x", "input": [
            {"role": "user", "content": "a"},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "d", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "1"}]}))
        .unwrap();
        let named = |param: &str| {
            echo.name_fields(ApiError::invalid(param, "bad"))
                .param
                .unwrap()
        };
        assert_eq!(named("messages[0].content"), "instructions");
        assert_eq!(named("messages[1].content"), "input[0].content");
        assert_eq!(named("messages[2].tool_calls[1]"), "input[1].tool_calls[1]");
        assert_eq!(named("messages[3]"), "input[3]");
        assert_eq!(named("messages"), "input");
        assert_eq!(named("max_tokens"), "max_tokens");
        assert_eq!(named("max_completion_tokens"), "max_output_tokens");
        assert_eq!(named("response_format"), "text.format");
        // The message speaks of the same fields.
        let e = echo.name_fields(ApiError::invalid(
            "max_completion_tokens",
            "`max_completion_tokens` must be at least 1",
        ));
        assert_eq!(e.message, "`max_output_tokens` must be at least 1");
        let e = echo.name_fields(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
        assert_eq!(e.message, "`input` must not be empty");
    }

    #[test]
    fn answers_become_output_items() {
        let items = output_items("resp_abc", "Paris.", false);
        assert_eq!(
            items,
            vec![message_item("msg_abc_0", "Paris.", "completed")]
        );
        let call = crate::tools::call_text("get_weather", "{\"city\": \"Paris\"}");
        // Cut by max_tokens in the arguments.
        let answer = format!("Let me see.\n{}", &call[..call.find("Pa").unwrap() + 2]);
        let items = output_items("resp_abc", &answer, true);
        assert_eq!(items[0]["content"][0]["text"], "Let me see.\n");
        assert_eq!(items[0]["id"], "msg_abc_0");
        assert_eq!(items[1]["type"], "function_call");
        assert_eq!(items[1]["id"], "fc_abc_1");
        assert_eq!(items[1]["arguments"], "{\"city\": \"Pa");
        assert_eq!(items[1]["status"], "incomplete");
        assert!(items[1]["call_id"].as_str().unwrap().starts_with("call_"));
        // Only calls: no message item.
        let items = output_items("resp_abc", &crate::tools::call_text("f", "{}"), true);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["status"], "completed");
    }
}
