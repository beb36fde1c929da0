//! OpenAI wire types, named as in the OpenAI API reference.
//!
//! Requests keep every field the official clients send; fields we do not implement land in
//! `extra` and are judged by `validation` (ignored with a warning, or a 400 when they
//! would change the meaning of the answer). Responses skip absent optional fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopSequences {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with empty `choices` and the request's `usage`.
    #[serde(default)]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a chat. `content` is a string or a list of parts (`{"type":"text",...}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool` (a function's result; the legacy
    /// `function` role is refused).
    pub role: String,
    /// A string, an array of content parts, or null (assistant turns with tool calls).
    #[serde(default)]
    pub content: Option<Value>,
    /// Participant name (accepted, not used by the template).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// `swarm` (the router, default), `swarm/<skill>`, or an elite id.
    #[serde(default)]
    pub model: Option<String>,
    /// The conversation; every turn is classified by the router.
    pub messages: Vec<ChatMessageIn>,
    /// Upper bound on generated tokens (legacy name).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Upper bound on generated tokens (current name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// 0 is greedy; up to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Up to 4 stop strings; the answer ends before the first one.
    #[serde(default)]
    pub stop: Option<StopSequences>,
    /// Number of choices.
    #[serde(default)]
    pub n: Option<u64>,
    /// Seed of the sampler: the same seed and request give the same answer.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Report each generated token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// How many of the most likely tokens to list beside each (0 to 20; needs `logprobs`).
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// `{"type": "text"}` (the default) or `{"type": "json_object"}` (JSON mode).
    #[serde(default)]
    pub response_format: Option<Value>,
    /// Added to these tokens' logits before sampling: `{"token id": bias}`, each in
    /// [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<Map<String, Value>>,
    /// Lowers a token's logit by this much per time it was generated (-2 to 2).
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Lowers a token's logit by this much once it has been generated (-2 to 2).
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// Functions the model may call: `[{"type": "function", "function": {"name",
    /// "description", "parameters", "strict"}}]`.
    #[serde(default)]
    pub tools: Option<Value>,
    /// `none`, `auto` (the default with tools), `required`, or
    /// `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether one answer may make several calls (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
    /// The legacy form of `tools`: `[{"name", "description", "parameters"}]`.
    #[serde(default)]
    pub functions: Option<Value>,
    /// The legacy form of `tool_choice`: `none`, `auto` or `{"name": ...}`.
    #[serde(default)]
    pub function_call: Option<Value>,
    /// End-user id (logged).
    #[serde(default)]
    pub user: Option<String>,
    /// Everything else, judged by validation.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `prompt` of `/v1/completions`: a string, a list of strings, or token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptIn,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stop: Option<StopSequences>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Report each generated token's log-probability with this many of the most likely
    /// tokens beside it (0 to 20).
    #[serde(default)]
    pub logprobs: Option<u64>,
    /// Start the answer with the prompt (with `logprobs`, list the prompt's tokens too).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Added to these tokens' logits before sampling: `{"token id": bias}`, each in
    /// [-100, 100].
    #[serde(default)]
    pub logit_bias: Option<Map<String, Value>>,
    /// Lowers a token's logit by this much per time it was generated (-2 to 2).
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Lowers a token's logit by this much once it has been generated (-2 to 2).
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache rather than prefilled.
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64, cached_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// The assistant's message in a chat answer.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessageOut {
    pub role: &'static str,
    /// Null when the answer is only function calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The legacy `functions` API's one call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
}

impl ChatMessageOut {
    /// The assistant's `answer`, with its calls read out when the request could make them
    /// (`api`), and its `finish_reason` (the engine's `finish`, or the API's reason for an
    /// answer that ended after its calls).
    pub fn answer(
        answer: String,
        api: Option<crate::tools::ToolApi>,
        finish: &'static str,
    ) -> (Self, &'static str) {
        use crate::tools::{SplitAnswer, ToolApi};
        let mut message = Self {
            role: "assistant",
            content: Some(answer),
            tool_calls: Vec::new(),
            function_call: None,
        };
        let Some(api) = api else {
            return (message, finish);
        };
        let SplitAnswer {
            text: content,
            calls,
            cut,
        } = SplitAnswer::new(message.content.as_deref().unwrap_or_default());
        let finish = api.finish_reason(finish, calls.len(), cut);
        message.content = content;
        match api {
            ToolApi::Tools => message.tool_calls = calls.into_iter().map(ToolCall::new).collect(),
            ToolApi::Functions => {
                message.function_call = calls.into_iter().next().map(FunctionCall::from)
            }
        }
        (message, finish)
    }
}

/// A function call in an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCall {
    /// `call_...`: what the `tool` message with the result names as its `tool_call_id`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

impl ToolCall {
    /// A call read out of an answer, with a fresh id.
    pub fn new(call: crate::tools::ParsedCall) -> Self {
        Self {
            id: crate::tools::new_call_id(),
            kind: "function",
            function: call.into(),
        }
    }
}

impl From<crate::tools::ParsedCall> for FunctionCall {
    fn from(call: crate::tools::ParsedCall) -> Self {
        Self {
            name: call.name,
            arguments: call.arguments,
        }
    }
}

/// The function called, and its arguments as a string of JSON (as OpenAI sends them).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// Part of a function call in a streamed chunk: `index` is its place among the choice's
/// calls. A call's first part has its `id`, `type` and `function.name`; the parts after it
/// only more `function.arguments`, to be appended (as OpenAI streams calls).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionCallDelta,
}

impl ToolCallDelta {
    /// Call number `index` begins, with a fresh id.
    pub fn start(index: usize, name: String, arguments: String) -> Self {
        Self {
            index: index as u32,
            id: Some(crate::tools::new_call_id()),
            kind: Some("function"),
            function: FunctionCallDelta::start(name, arguments),
        }
    }

    /// More of call `index`'s arguments.
    pub fn arguments(index: usize, arguments: String) -> Self {
        Self {
            index: index as u32,
            id: None,
            kind: None,
            function: FunctionCallDelta::arguments(arguments),
        }
    }
}

/// Part of a streamed call: its name in the first part only.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl FunctionCallDelta {
    pub fn start(name: String, arguments: String) -> Self {
        Self {
            name: Some(name),
            arguments,
        }
    }

    pub fn arguments(arguments: String) -> Self {
        Self {
            name: None,
            arguments,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessageOut,
    /// Null unless the request set `logprobs`.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, or `tool_calls` (the answer called functions).
    pub finish_reason: &'static str,
}

/// A non-streamed chat answer (`object: "chat.completion"`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    /// The elite that served.
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: String,
}

/// What a streamed chunk adds to the message.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// The legacy `functions` API's call: its name first, then its arguments in parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCallDelta>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    /// The log-probabilities of this chunk's tokens, when the request set `logprobs`.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A streamed chat chunk (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Present (null) on every chunk when usage was asked for, set on the last one only,
    /// as OpenAI does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    /// Null unless the request set `logprobs`.
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A completion answer or streamed chunk (`object: "text_completion"` for both, as OpenAI).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// A chat choice's `logprobs`: one entry per generated token.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    /// Always null: the models do not refuse in a separate channel.
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

/// One generated token in a chat's `logprobs.content`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    /// The token's text (U+FFFD where it holds part of a character: see `bytes`).
    pub token: String,
    pub logprob: f32,
    /// The token's exact UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this step, most likely first.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A completion choice's `logprobs` (the legacy format): parallel lists, one entry per
/// generated token.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// Null for an echoed prompt's first token, which nothing comes before.
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token, the most likely tokens at its step and their log-probabilities, most likely
    /// first (null where `token_logprobs` is).
    pub top_logprobs: Vec<Option<TopLogprobMap>>,
    /// Where each token starts in the choice's text, in characters.
    pub text_offset: Vec<usize>,
}

/// `{token: logprob, ...}` in order, most likely first; a token text that two tokens share
/// (two halves of different characters both print as U+FFFD) is listed once, with the higher.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobMap(pub Vec<(String, f32)>);

impl Serialize for TopLogprobMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (token, logprob) in &self.0 {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// The model this one derives from (the base, for elites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// swarm's extra: what the entry is, and per-skill scores for elites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm: Option<Value>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As sent by `openai` 1.x: `client.chat.completions.create(model=..., messages=[...],
    /// stream=True, stream_options={"include_usage": True}, seed=1)`.
    #[test]
    fn parses_a_request_from_the_official_client() {
        let body = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"hi"}]}],"model":"swarm","seed":1,"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":8,"frequency_penalty":0}"#;
        let r: ChatCompletionRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.seed, Some(1));
        assert_eq!(r.max_completion_tokens, Some(8));
        assert_eq!(r.frequency_penalty, Some(0.0));
        assert_eq!(r.stream_options.and_then(|o| o.include_usage), Some(true));
    }

    #[test]
    fn prompt_forms() {
        for (body, ok) in [
            (r#"{"prompt":"a"}"#, true),
            (r#"{"prompt":["a","b"]}"#, true),
            (r#"{"prompt":[1,2]}"#, true),
            (r#"{"prompt":[[1],[2]]}"#, true),
            (r#"{"prompt":{"x":1}}"#, false),
        ] {
            assert_eq!(
                serde_json::from_str::<CompletionRequest>(body).is_ok(),
                ok,
                "{body}"
            );
        }
    }

    #[test]
    fn chunk_usage_is_null_until_the_last() {
        let mut c = ChatCompletionChunk {
            id: "x".into(),
            object: "chat.completion.chunk",
            created: 0,
            model: "m".into(),
            system_fingerprint: "fp".into(),
            choices: vec![],
            usage: Some(None),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert!(v["usage"].is_null() && v.as_object().unwrap().contains_key("usage"));
        c.usage = None;
        let v = serde_json::to_value(&c).unwrap();
        assert!(!v.as_object().unwrap().contains_key("usage"));
    }
}
