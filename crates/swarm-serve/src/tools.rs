//! Function calling (`tools`): the request's functions resolved into a [`ToolSet`], how
//! they and past calls are written into the prompt, and how calls are read back out of the
//! answer.
//!
//! One text format serves every model, so that the prompt, the guided decoding
//! ([`crate::guide`]) and the parser below always agree. It is the Hermes / Qwen layout that
//! small instruction models have most often seen:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! The functions are listed in a system message, past calls are written back in that layout
//! in the assistant's turn, and tool results come back as a user turn inside
//! `<tool_response>` tags. A model's own chat template is not asked to render tools: few
//! Llama-family templates can, and each that does speaks a format of its own.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use swarm_model::JsonSchema;

use crate::error::ApiError;
use crate::validation::JsonFormat;

/// Opens a call in the answer.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes a call.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// How many functions one request may list (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// A call up to its name (after the name's opening quote).
pub const CALL_HEAD: &str = "<tool_call>\n{\"name\": \"";
/// From the name's closing quote to the arguments.
pub const CALL_MIDDLE: &str = "\", \"arguments\": ";
/// After the arguments.
pub const CALL_TAIL: &str = "}\n</tool_call>";
/// Between two calls of one answer.
pub const CALL_SEPARATOR: &str = "\n";

/// A call's text, as the guide lets the model write it and as past calls are replayed:
/// `<tool_call>\n{"name": "NAME", "arguments": ARGUMENTS}\n</tool_call>`.
pub fn call_text(name: &str, arguments: &str) -> String {
    let quoted = serde_json::to_string(name).unwrap_or_else(|_| format!("\"{name}\""));
    let inner = &quoted[1..quoted.len() - 1];
    format!(
        "{CALL_HEAD}{inner}{CALL_MIDDLE}{}{CALL_TAIL}",
        arguments.trim()
    )
}

/// Which calls the answer may or must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    /// `auto`: text, calls, or both; the model decides.
    Auto,
    /// `required`: at least one call, nothing else.
    Required,
    /// `{"type": "function", "function": {"name": ...}}`: one call of this function (an
    /// index into [`ToolSet::functions`]).
    Function(usize),
}

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    /// The tool as the prompt lists it: `{"type": "function", "function": {...}}`.
    pub definition: Value,
    /// What the arguments must be: an object of `parameters` as [`JsonSchema`] compiles it
    /// (strict, or leniently for functions without `strict`), else (a non-strict shape it
    /// cannot guide) any object.
    pub arguments: JsonFormat,
}

/// The functions of a request that may call them (`tool_choice` not `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    pub functions: Vec<FunctionTool>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: whether one answer may make more than one call.
    pub parallel: bool,
    /// How the request asked, and so how the calls go back.
    pub api: ToolApi,
}

impl ToolSet {
    /// The indices of the functions the answer may call.
    pub fn callable(&self) -> Vec<usize> {
        match self.choice {
            ToolChoice::Function(i) => vec![i],
            ToolChoice::Auto | ToolChoice::Required => (0..self.functions.len()).collect(),
        }
    }

    /// What the router reads of the tools in place of [`system_prompt`](Self::system_prompt):
    /// each function's name and description, without the instructions around them, which
    /// say nothing of the request's skill.
    pub fn routing_text(&self) -> String {
        self.functions
            .iter()
            .map(|f| {
                let description = f.definition["function"]["description"]
                    .as_str()
                    .unwrap_or_default();
                format!("{} {description}", f.name.replace(['_', '-'], " "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The system text that lists the functions and the format of a call.
    pub fn system_prompt(&self) -> String {
        let mut text = String::from(
            "You can call functions to answer. Each is described by a JSON object, one per \
             line, inside <tools></tools>:\n<tools>\n",
        );
        for f in &self.functions {
            text.push_str(&serde_json::to_string(&f.definition).unwrap_or_default());
            text.push('\n');
        }
        text.push_str("</tools>\n\nTo call one, write its name and its arguments as a JSON object inside <tool_call></tool_call> tags:\n");
        text.push_str(&call_text(
            "<function name>",
            "<arguments as a JSON object>",
        ));
        if let ToolChoice::Function(i) = self.choice {
            text.push_str(&format!(
                "\n\nCall the function {} now.",
                self.functions[i].name
            ));
        } else if self.choice == ToolChoice::Required {
            text.push_str("\n\nAnswer with function calls only.");
        }
        text
    }
}

/// A function name as OpenAI allows it: 1 to 64 of `a-z A-Z 0-9 _ -`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How the request spells function calling, and so how the answer must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolApi {
    /// `tools` and `tool_choice`: calls come back in `tool_calls`.
    Tools,
    /// The legacy `functions` and `function_call`: one call, back in `function_call`.
    Functions,
}

impl ToolApi {
    /// The request's field that lists the functions.
    fn list(self) -> &'static str {
        match self {
            ToolApi::Tools => "tools",
            ToolApi::Functions => "functions",
        }
    }

    /// The request's field that chooses among them.
    fn choice(self) -> &'static str {
        match self {
            ToolApi::Tools => "tool_choice",
            ToolApi::Functions => "function_call",
        }
    }

    /// What a choice may be, for error messages.
    fn choices(self) -> &'static str {
        match self {
            ToolApi::Tools => {
                "`none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}"
            }
            ToolApi::Functions => "`none`, `auto` or {\"name\": ...}",
        }
    }
}

impl ToolApi {
    /// `finish_reason` of an answer that made calls and ended by itself (`finish` is
    /// `stop`) after a whole one (not `cut` in one's arguments); other answers keep theirs.
    pub fn finish_reason(self, finish: &'static str, calls: usize, cut: bool) -> &'static str {
        match self {
            _ if calls == 0 || cut || finish != "stop" => finish,
            ToolApi::Tools => "tool_calls",
            ToolApi::Functions => "function_call",
        }
    }
}

/// Resolves `tools`, `tool_choice` and `parallel_tool_calls`. `None` when the answer may
/// not call anything: no tools, or `tool_choice: "none"`.
pub fn resolve_tools(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<&Value>,
) -> Result<Option<ToolSet>, ApiError> {
    let parallel = match parallel {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be true or false",
            ))
        }
    };
    resolve(ToolApi::Tools, tools, tool_choice, parallel)
}

/// Resolves the legacy `functions` and `function_call` (one call at most, as that API
/// returns one).
pub fn resolve_functions(
    functions: Option<&Value>,
    function_call: Option<&Value>,
) -> Result<Option<ToolSet>, ApiError> {
    resolve(ToolApi::Functions, functions, function_call, false)
}

fn resolve(
    api: ToolApi,
    list: Option<&Value>,
    choice: Option<&Value>,
    parallel: bool,
) -> Result<Option<ToolSet>, ApiError> {
    let (list_name, choice_name) = (api.list(), api.choice());
    let list = match list {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => {
            return Err(ApiError::invalid(
                list_name,
                format!("`{list_name}` must be a list"),
            ))
        }
    };
    let choice = choice.filter(|c| !c.is_null());
    if list.is_empty() {
        return match choice {
            None => Ok(None),
            Some(c) if c == "none" => Ok(None),
            Some(_) => Err(ApiError::invalid(
                choice_name,
                format!("`{choice_name}` needs `{list_name}` to choose from"),
            )),
        };
    }
    if list.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            list_name,
            format!(
                "`{list_name}` lists {} functions; at most {MAX_TOOLS} are allowed",
                list.len()
            ),
        ));
    }
    let mut functions: Vec<FunctionTool> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let (param, function) = match api {
            ToolApi::Tools => (format!("tools[{i}].function"), tool_function(i, item)?),
            ToolApi::Functions => (format!("functions[{i}]"), item),
        };
        let f = function_tool(&param, function)?;
        if functions.iter().any(|g| g.name == f.name) {
            return Err(ApiError::invalid(
                format!("{param}.name"),
                format!("two functions are named `{}`", f.name),
            ));
        }
        functions.push(f);
    }
    let unknown = |what: String| {
        ApiError::invalid(
            choice_name,
            format!("`{choice_name}` is {what}; it must be {}", api.choices()),
        )
    };
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match (s.as_str(), api) {
            ("none", _) => return Ok(None),
            ("auto", _) => ToolChoice::Auto,
            ("required", ToolApi::Tools) => ToolChoice::Required,
            (other, _) => return Err(unknown(format!("`{other}`"))),
        },
        Some(c) => {
            let name = match api {
                ToolApi::Tools => c
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .filter(|_| c.get("type").is_none_or(|t| t == "function")),
                ToolApi::Functions => c.get("name"),
            }
            .and_then(Value::as_str)
            .ok_or_else(|| unknown("not one of those".to_string()))?;
            let index = functions
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| {
                    ApiError::invalid(
                        choice_name,
                        format!("`{choice_name}` names `{name}`, which is not in `{list_name}`"),
                    )
                })?;
            ToolChoice::Function(index)
        }
    };
    Ok(Some(ToolSet {
        functions,
        choice,
        parallel,
        api,
    }))
}

/// `tools[i]`: `{"type": "function", "function": {...}}`; its `function`.
fn tool_function(i: usize, tool: &Value) -> Result<&Value, ApiError> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(ApiError::invalid(
            format!("tools[{i}].type"),
            "only tools of type `function` are supported",
        ));
    }
    tool.get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| {
            ApiError::invalid(
                format!("tools[{i}].function"),
                "a tool needs a `function` object",
            )
        })
}

/// A function (`{"name", "description"?, "parameters"?, "strict"?}`), found at `param` in
/// the request.
fn function_tool(param: &str, function: &Value) -> Result<FunctionTool, ApiError> {
    if !function.is_object() {
        return Err(ApiError::invalid(param, "a function must be an object"));
    }
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| valid_name(n))
        .ok_or_else(|| {
            ApiError::invalid(
                format!("{param}.name"),
                "a function's `name` must be 1 to 64 letters, digits, `_` or `-`",
            )
        })?;
    let strict = function.get("strict").and_then(Value::as_bool) == Some(true);
    // A function without parameters takes none: its arguments are `{}`.
    let parameters = function
        .get("parameters")
        .filter(|p| !p.is_null())
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
    let compiled = if strict {
        JsonSchema::compile(&parameters)
    } else {
        JsonSchema::compile_lenient(&parameters)
    };
    let arguments = match compiled {
        Ok(schema) => JsonFormat::Schema(Arc::new(schema)),
        // OpenAI does not promise that a non-strict function's arguments match its schema;
        // a shape the lenient compiler cannot guide still gets one JSON object.
        Err(_) if !strict => JsonFormat::Object,
        Err(e) => {
            return Err(ApiError::invalid(
                format!("{param}.parameters"),
                format!("`{param}.parameters` (strict): {e}"),
            ))
        }
    };
    let mut definition = serde_json::Map::new();
    definition.insert("name".into(), Value::from(name));
    if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
        definition.insert("description".into(), d.clone());
    }
    definition.insert("parameters".into(), parameters);
    Ok(FunctionTool {
        name: name.to_string(),
        definition: serde_json::json!({"type": "function", "function": definition}),
        arguments,
    })
}

/// An assistant turn's `tool_calls`, written back as the model would have written them.
/// `index` is the message's, for error messages.
pub fn past_calls_text(index: usize, calls: &Value) -> Result<String, ApiError> {
    let param = format!("messages[{index}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| ApiError::invalid(&param, "`tool_calls` must be a list"))?;
    let mut texts = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let function = call
            .get("function")
            .filter(|_| call.get("type").is_none_or(|t| t == "function"))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("{param}[{j}]"),
                    "a tool call needs `type: function` and a `function`",
                )
            })?;
        texts.push(past_call_text(&format!("{param}[{j}].function"), function)?);
    }
    Ok(texts.join(CALL_SEPARATOR))
}

/// One past call, `{"name", "arguments"}` (a tool call's `function`, or the legacy
/// `function_call`) found at `param`, written back as the model would have written it.
pub fn past_call_text(param: &str, function: &Value) -> Result<String, ApiError> {
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid(
                format!("{param}.name"),
                "a call needs the function's `name`",
            )
        })?;
    // OpenAI sends a string of JSON; some clients send the object itself.
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) if serde_json::from_str::<Value>(text).is_ok() => text.clone(),
        Some(object @ Value::Object(_)) => object.to_string(),
        Some(_) => {
            return Err(ApiError::invalid(
                format!("{param}.arguments"),
                "a call's `arguments` must be a string of JSON (or a JSON object)",
            ))
        }
    };
    Ok(call_text(name, &arguments))
}

/// A tool's result, as the user turn that hands it back.
pub fn tool_response_text(content: &str) -> String {
    format!("<tool_response>\n{content}\n</tool_response>")
}

/// A call read out of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments object as the model wrote it (OpenAI sends them as a string).
    pub arguments: String,
}

/// What the answer holds, in order, as it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerPiece {
    Text(String),
    /// The answer's call number `index` (from 0) begins: its name, and the first part of
    /// its arguments (possibly empty).
    CallStart {
        index: usize,
        name: String,
        arguments: String,
    },
    /// The next part of call `index`'s arguments.
    Arguments {
        index: usize,
        text: String,
    },
}

#[derive(Deserialize)]
struct CallBody<'a> {
    name: String,
    #[serde(borrow)]
    arguments: &'a RawValue,
}

/// Where the splitter is in the answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Free text.
    #[default]
    Text,
    /// After `<tool_call>`, while the text follows the call layout up to the arguments.
    Head,
    /// In a call's arguments (sent as they come): the JSON's nesting so far.
    Arguments {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments: how much of the layout's tail has been read.
    Tail { matched: usize },
    /// A block that left the layout: read whole at its first closing tag that ends a call.
    Unstructured,
}

/// Reads calls out of an answer as it streams. Text outside `<tool_call>` blocks comes out as
/// it arrives (but for an end that may begin a tag). A block in the layout the guide makes the
/// model write (`call_text`) comes out as it is written: the call's name once it is complete,
/// then its arguments piece by piece, so that a client sees long arguments grow as OpenAI's
/// API streams them. A block in another layout (a model writing without the guide) comes out
/// whole once its closing tag ends a call.
#[derive(Debug, Default)]
pub struct ToolCallSplitter {
    /// Text not yet given out: in `Head` and `Unstructured` everything after `<tool_call>`.
    buffer: String,
    phase: Phase,
    calls: usize,
    /// Whether the answer ended in a call's arguments.
    cut: bool,
    /// Whether the text so far after the last call is only whitespace (dropped).
    after_call: bool,
}

/// The layout from the opening tag to the call's name.
fn head_layout() -> &'static str {
    &CALL_HEAD[TOOL_CALL_OPEN.len()..]
}

/// A name longer than this is not waited for in the layout (OpenAI allows 64 characters).
const MAX_NAME_BYTES: usize = 256;

impl ToolCallSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the answer's next text; returns what it completes.
    pub fn push(&mut self, text: &str) -> Vec<AnswerPiece> {
        self.buffer.push_str(text);
        let mut out = Vec::new();
        loop {
            let progressed = match self.phase {
                Phase::Text => self.read_text(&mut out),
                Phase::Head => self.read_head(&mut out),
                Phase::Arguments { .. } => self.read_arguments(&mut out),
                Phase::Tail { matched } => self.read_tail(matched),
                Phase::Unstructured => self.read_unstructured(&mut out),
            };
            if !progressed {
                break;
            }
        }
        out
    }

    /// The answer ended. A call cut short in its arguments (by `max_tokens` or a stop
    /// string) stays a call, with the arguments it has, as OpenAI's API leaves it; a block
    /// cut before its arguments began is text.
    pub fn finish(&mut self) -> Vec<AnswerPiece> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.buffer);
        match std::mem::take(&mut self.phase) {
            Phase::Head | Phase::Unstructured => {
                self.text(&mut out, format!("{TOOL_CALL_OPEN}{rest}"));
            }
            Phase::Text => self.text(&mut out, rest),
            // Nothing is kept back in the arguments.
            Phase::Arguments { .. } => self.cut = true,
            // The arguments are whole: what is missing is layout.
            Phase::Tail { .. } => {}
        }
        out
    }

    /// How many calls were read (begun, for one cut short).
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether the answer, once ended (`finish`), was cut in a call's arguments.
    pub fn cut(&self) -> bool {
        self.cut
    }

    /// Free text up to the next opening tag, keeping back an end that may begin one.
    fn read_text(&mut self, out: &mut Vec<AnswerPiece>) -> bool {
        if let Some(start) = self.buffer.find(TOOL_CALL_OPEN) {
            let before: String = self.buffer.drain(..start).collect();
            self.buffer.drain(..TOOL_CALL_OPEN.len());
            self.text(out, before);
            self.phase = Phase::Head;
            return true;
        }
        let keep = (1..TOOL_CALL_OPEN.len())
            .rev()
            .find(|&k| {
                self.buffer.len() >= k
                    && self.buffer.is_char_boundary(self.buffer.len() - k)
                    && TOOL_CALL_OPEN.starts_with(&self.buffer[self.buffer.len() - k..])
            })
            .unwrap_or(0);
        let ready: String = self.buffer.drain(..self.buffer.len() - keep).collect();
        self.text(out, ready);
        false
    }

    /// The block's start, `\n{"name": "NAME", "arguments": {`: once it is all there the call
    /// begins; text that leaves it makes the block unstructured.
    fn read_head(&mut self, out: &mut Vec<AnswerPiece>) -> bool {
        let head = head_layout();
        if head.starts_with(self.buffer.as_str()) {
            return false;
        }
        if !self.buffer.starts_with(head) {
            self.phase = Phase::Unstructured;
            return true;
        }
        let rest = &self.buffer[head.len()..];
        let Some(quote) = rest.find('"') else {
            if rest.contains('\\') || rest.len() > MAX_NAME_BYTES {
                self.phase = Phase::Unstructured;
                return true;
            }
            return false;
        };
        let name = &rest[..quote];
        let after = &rest[quote..];
        let opening = arguments_opening();
        if !after.starts_with(opening) {
            if opening.starts_with(after) {
                return false;
            }
            self.phase = Phase::Unstructured;
            return true;
        }
        if name.contains('\\') {
            self.phase = Phase::Unstructured;
            return true;
        }
        let name = name.to_string();
        // The arguments start at their `{`, which `read_arguments` reads.
        let arguments_start = head.len() + quote + CALL_MIDDLE.len();
        self.buffer.drain(..arguments_start);
        out.push(AnswerPiece::CallStart {
            index: self.calls,
            name,
            arguments: String::new(),
        });
        self.calls += 1;
        self.phase = Phase::Arguments {
            depth: 0,
            in_string: false,
            escaped: false,
        };
        true
    }

    /// The arguments, sent as far as they go, up to the `}` that closes them.
    fn read_arguments(&mut self, out: &mut Vec<AnswerPiece>) -> bool {
        let Phase::Arguments {
            mut depth,
            mut in_string,
            mut escaped,
        } = self.phase
        else {
            return false;
        };
        let mut end = None;
        for (i, c) in self.buffer.char_indices() {
            if in_string {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth == 0 {
                end = Some(i + c.len_utf8());
                break;
            }
        }
        let taken = end.unwrap_or(self.buffer.len());
        let text: String = self.buffer.drain(..taken).collect();
        let index = self.calls - 1;
        if !text.is_empty() {
            push_arguments(out, index, text);
        }
        match end {
            Some(_) => {
                self.phase = Phase::Tail { matched: 0 };
                true
            }
            None => {
                self.phase = Phase::Arguments {
                    depth,
                    in_string,
                    escaped,
                };
                false
            }
        }
    }

    /// `}\n</tool_call>` after the arguments. Text that leaves it ends the call there and is
    /// read as what follows the call.
    fn read_tail(&mut self, matched: usize) -> bool {
        let tail = &CALL_TAIL[matched..];
        let common = tail
            .bytes()
            .zip(self.buffer.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        if common == tail.len() {
            self.buffer.drain(..common);
            self.end_call();
            true
        } else if common == self.buffer.len() {
            self.buffer.clear();
            self.phase = Phase::Tail {
                matched: matched + common,
            };
            false
        } else {
            // `CALL_TAIL` is ASCII, so `common` is a character boundary.
            self.buffer.drain(..common);
            self.end_call();
            true
        }
    }

    /// A block out of the layout: the first closing tag that ends a valid call (an argument
    /// string may hold the tag's text); none yet: wait for more.
    fn read_unstructured(&mut self, out: &mut Vec<AnswerPiece>) -> bool {
        let found = self
            .buffer
            .match_indices(TOOL_CALL_CLOSE)
            .find_map(|(end, _)| {
                let body = self.buffer[..end].trim();
                let call = serde_json::from_str::<CallBody>(body).ok()?;
                let arguments = call.arguments.get();
                arguments
                    .starts_with('{')
                    .then(|| (end, call.name, arguments.to_string()))
            });
        let Some((end, name, arguments)) = found else {
            return false;
        };
        self.buffer.drain(..end + TOOL_CALL_CLOSE.len());
        out.push(AnswerPiece::CallStart {
            index: self.calls,
            name,
            arguments,
        });
        self.calls += 1;
        self.end_call();
        true
    }

    fn end_call(&mut self) {
        self.phase = Phase::Text;
        self.after_call = true;
    }

    /// Text right after a call starts at its first character that is not whitespace (the
    /// line breaks between calls are layout, not content).
    fn text(&mut self, out: &mut Vec<AnswerPiece>, text: String) {
        let text = if self.after_call {
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                return;
            }
            self.after_call = false;
            trimmed.to_string()
        } else {
            text
        };
        if !text.is_empty() {
            out.push(AnswerPiece::Text(text));
        }
    }
}

/// The layout from the name's closing quote to the arguments' opening brace.
fn arguments_opening() -> &'static str {
    static MIDDLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MIDDLE.get_or_init(|| format!("{CALL_MIDDLE}{{"))
}

/// Adds arguments text to the call's last piece in `out` when there is one (one chunk per
/// call per token), else as a piece of its own.
fn push_arguments(out: &mut Vec<AnswerPiece>, index: usize, text: String) {
    match out.last_mut() {
        Some(AnswerPiece::CallStart {
            index: i,
            arguments,
            ..
        })
        | Some(AnswerPiece::Arguments {
            index: i,
            text: arguments,
        }) if *i == index => arguments.push_str(&text),
        _ => out.push(AnswerPiece::Arguments { index, text }),
    }
}

/// A whole answer split into its text (`None` when there is none beside calls) and calls.
pub fn split_answer(answer: &str) -> (Option<String>, Vec<ParsedCall>) {
    let split = SplitAnswer::new(answer);
    (split.text, split.calls)
}

/// A whole answer's text and calls, and whether it was cut in a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitAnswer {
    /// `None` when there is none beside calls.
    pub text: Option<String>,
    pub calls: Vec<ParsedCall>,
    /// The last call's arguments are unfinished.
    pub cut: bool,
}

impl SplitAnswer {
    pub fn new(answer: &str) -> Self {
        let mut splitter = ToolCallSplitter::new();
        let mut pieces = splitter.push(answer);
        pieces.extend(splitter.finish());
        let (text, calls) = join_pieces(pieces);
        Self {
            text,
            calls,
            cut: splitter.cut(),
        }
    }
}

/// The text (`None` when there is none beside calls) and calls that `pieces` make up.
pub fn join_pieces(pieces: Vec<AnswerPiece>) -> (Option<String>, Vec<ParsedCall>) {
    let mut text = String::new();
    let mut calls: Vec<ParsedCall> = Vec::new();
    for piece in pieces {
        match piece {
            AnswerPiece::Text(t) => text.push_str(&t),
            AnswerPiece::CallStart {
                name, arguments, ..
            } => calls.push(ParsedCall { name, arguments }),
            AnswerPiece::Arguments { index, text } => {
                if let Some(call) = calls.get_mut(index) {
                    call.arguments.push_str(&text);
                }
            }
        }
    }
    let text = if calls.is_empty() || !text.trim().is_empty() {
        Some(text)
    } else {
        None
    };
    (text, calls)
}

/// A fresh id for a call (`call_` and 24 hex digits), as OpenAI's look.
pub fn new_call_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut id = String::from("call_");
    for part in 0..2u64 {
        let mut h = state.build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u64(part);
        id.push_str(&format!("{:012x}", h.finish() & 0xffff_ffff_ffff));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city"]}}})
    }

    fn strict_time() -> Value {
        json!({"type": "function", "function": {
            "name": "get_time", "strict": true,
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                "required": ["zone"], "additionalProperties": false}}})
    }

    fn invalid_param(r: Result<Option<ToolSet>, ApiError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.param.clone().unwrap_or_default(), e.message.clone())
    }

    #[test]
    fn resolves_functions_and_choices() {
        let tools = json!([weather(), strict_time()]);
        let set = resolve_tools(Some(&tools), None, None).unwrap().unwrap();
        assert_eq!(set.choice, ToolChoice::Auto);
        assert!(set.parallel);
        // Optional `unit`: guided leniently, by its schema.
        assert!(matches!(set.functions[0].arguments, JsonFormat::Schema(_)));
        let odd = json!([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}}}]);
        let set_odd = resolve_tools(Some(&odd), None, None).unwrap().unwrap();
        assert_eq!(set_odd.functions[0].arguments, JsonFormat::Object);
        assert!(matches!(set.functions[1].arguments, JsonFormat::Schema(_)));
        assert_eq!(set.callable(), vec![0, 1]);
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let set = resolve_tools(Some(&tools), Some(&named), Some(&json!(false)))
            .unwrap()
            .unwrap();
        assert_eq!(set.choice, ToolChoice::Function(1));
        assert_eq!(set.callable(), vec![1]);
        assert!(!set.parallel);
        let set = resolve_tools(Some(&tools), Some(&json!("required")), None)
            .unwrap()
            .unwrap();
        assert_eq!(set.choice, ToolChoice::Required);
        assert!(resolve_tools(Some(&tools), Some(&json!("none")), None)
            .unwrap()
            .is_none());
        assert!(resolve_tools(None, None, None).unwrap().is_none());
        assert!(resolve_tools(Some(&json!([])), Some(&json!("none")), None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_function_without_parameters_takes_an_empty_object() {
        let tools = json!([{"type": "function", "function": {"name": "now"}}]);
        let set = resolve_tools(Some(&tools), None, None).unwrap().unwrap();
        let JsonFormat::Schema(schema) = &set.functions[0].arguments else {
            panic!("expected a schema");
        };
        use swarm_model::{JsonCheck, SchemaPrefix};
        let mut check = SchemaPrefix::new(schema.clone());
        assert!(check.push(b"{}") && check.is_complete());
        assert!(!SchemaPrefix::new(schema.clone()).accepts(b"{\""));
    }

    #[test]
    fn bad_tools_name_the_field() {
        let tools = json!([weather()]);
        for (tools, choice, param, words) in [
            (json!({}), None, "tools", "must be a list"),
            (
                json!([{"type": "retrieval"}]),
                None,
                "tools[0].type",
                "function",
            ),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                None,
                "tools[0].function.name",
                "letters",
            ),
            (
                json!([weather(), weather()]),
                None,
                "tools[1].function.name",
                "two functions",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "strict": true,
                    "parameters": {"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}, "required": ["x"]}}}]),
                None,
                "tools[0].function.parameters",
                "`pattern` is not supported",
            ),
            (
                tools.clone(),
                Some(json!({"type": "function", "function": {"name": "nope"}})),
                "tool_choice",
                "`nope`",
            ),
            (
                tools.clone(),
                Some(json!("sometimes")),
                "tool_choice",
                "`sometimes`",
            ),
            (
                json!([]),
                Some(json!("required")),
                "tool_choice",
                "needs `tools`",
            ),
        ] {
            let (p, message) = invalid_param(resolve_tools(Some(&tools), choice.as_ref(), None));
            assert_eq!(p, param, "{message}");
            assert!(message.contains(words), "{message}");
        }
        let (p, _) = invalid_param(resolve_tools(Some(&tools), None, Some(&json!("yes"))));
        assert_eq!(p, "parallel_tool_calls");
    }

    #[test]
    fn the_system_prompt_lists_every_function_and_the_format() {
        let tools = json!([weather(), strict_time()]);
        let set = resolve_tools(Some(&tools), Some(&json!("required")), None)
            .unwrap()
            .unwrap();
        let text = set.system_prompt();
        let listed: Vec<Value> = text
            .split("<tools>\n")
            .nth(1)
            .and_then(|t| t.split("</tools>").next())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["function"]["name"], "get_weather");
        assert_eq!(listed[0]["function"]["description"], "Weather in a city");
        assert_eq!(
            listed[1]["function"]["parameters"]["required"],
            json!(["zone"])
        );
        assert!(text.contains("<tool_call>\n{\"name\": \"<function name>\""));
        assert!(text.ends_with("Answer with function calls only."));
    }

    #[test]
    fn past_calls_are_written_as_the_model_writes_them() {
        let calls = json!([
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": " {\"zone\":\"CET\"} "}}
        ]);
        assert_eq!(
            past_calls_text(3, &calls).unwrap(),
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\":\"CET\"}}\n</tool_call>"
        );
        // Arguments given as the object itself are written as JSON.
        let object =
            json!([{"type": "function", "function": {"name": "f", "arguments": {"a": [1]}}}]);
        assert_eq!(
            past_calls_text(0, &object).unwrap(),
            call_text("f", "{\"a\":[1]}")
        );
        let bad = json!([{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]);
        let e = past_calls_text(3, &bad).unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages[3].tool_calls[0].function.arguments")
        );
        // What is written back reads back as the same calls.
        let (text, parsed) = split_answer(&past_calls_text(0, &calls).unwrap());
        assert_eq!(text, None);
        assert_eq!(parsed[0].name, "get_weather");
        assert_eq!(parsed[1].arguments, "{\"zone\":\"CET\"}");
    }

    #[test]
    fn splits_text_and_calls() {
        let answer = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let (text, calls) = split_answer(answer);
        assert_eq!(text.as_deref(), Some("Let me check.\n"));
        assert_eq!(
            calls,
            vec![
                ParsedCall {
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Paris\", \"unit\": \"c\"}".into()
                },
                ParsedCall {
                    name: "get_time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(
            split_answer("plain <tool text"),
            (Some("plain <tool text".into()), vec![])
        );
        // Cut short by max_tokens before its arguments: the unfinished block stays text.
        let cut = "<tool_call>\n{\"name\": \"get_weather\", \"argu";
        assert_eq!(split_answer(cut), (Some(cut.into()), vec![]));
        // Cut in its arguments: a call with the arguments written so far.
        let cut = "Hm.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par";
        let split = SplitAnswer::new(cut);
        assert_eq!(split.text.as_deref(), Some("Hm."));
        assert_eq!(split.calls[0].arguments, "{\"city\": \"Par");
        assert!(split.cut);
        // Cut in the layout after them: whole.
        let cut = call_text("f", "{}");
        let split = SplitAnswer::new(&cut[..cut.len() - 3]);
        assert_eq!((split.calls.len(), split.cut), (1, false));
        // The layout without its spaces (a model writing without the guide): read whole.
        let tight = "<tool_call>{\"name\":\"f\",\"arguments\":{\"a\":[1,{}]}}</tool_call> ok";
        let (text, calls) = split_answer(tight);
        assert_eq!(text.as_deref(), Some("ok"));
        assert_eq!(calls[0].arguments, "{\"a\":[1,{}]}");
        // A block that is not a call stays text.
        let odd = "<tool_call>hello</tool_call>";
        assert_eq!(split_answer(odd), (Some(odd.into()), vec![]));
    }

    /// `answer` pushed `step` characters at a time, then finished: every piece, and whether
    /// it was cut in a call.
    fn push_in_steps(answer: &str, step: usize) -> (Vec<AnswerPiece>, bool) {
        let chars: Vec<(usize, char)> = answer.char_indices().collect();
        let mut splitter = ToolCallSplitter::new();
        let mut pieces = Vec::new();
        for chunk in chars.chunks(step) {
            let start = chunk[0].0;
            let end = chunk.last().map(|(i, c)| i + c.len_utf8()).unwrap();
            pieces.extend(splitter.push(&answer[start..end]));
        }
        pieces.extend(splitter.finish());
        (pieces, splitter.cut())
    }

    #[test]
    fn streaming_at_any_split_gives_the_same_pieces() {
        let answer = "Sure ü.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"<tool_call>\"}}\n</tool_call>\nand <tool";
        let whole = split_answer(answer);
        for step in 1..6 {
            let (pieces, _) = push_in_steps(answer, step);
            for piece in &pieces {
                // Text comes out as soon as it cannot be the start of a tag.
                if let AnswerPiece::Text(t) = piece {
                    assert!(!t.contains("<tool_call>"), "{t:?}");
                }
            }
            assert_eq!(join_pieces(pieces), whole, "step {step}");
        }
        assert_eq!(whole.1[0].arguments, "{\"a\": \"<tool_call>\"}");
        assert_eq!(whole.0.as_deref(), Some("Sure ü.\nand <tool"));
    }

    /// Escaped quotes and backslashes, brackets in strings, nested arrays: wherever the
    /// answer is cut into tokens, the arguments end at the brace that closes them.
    #[test]
    fn arguments_end_at_their_closing_brace_at_any_split() {
        let tricky = r#"{"a": "x\"}\\", "b": [{"c": "}]"}, [1, {}]], "d": "\\"}"#;
        let answer = format!("{}\n{}\ndone", call_text("f", tricky), call_text("g", "{}"));
        let whole = split_answer(&answer);
        assert_eq!(whole.1[0].arguments, tricky);
        assert_eq!(whole.1[1].arguments, "{}");
        assert_eq!(whole.0.as_deref(), Some("done"));
        for step in 1..9 {
            let (pieces, cut) = push_in_steps(&answer, step);
            assert!(!cut);
            assert_eq!(join_pieces(pieces), whole, "step {step}");
        }
        // Text that leaves the layout after the arguments ends the call there.
        let odd = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}} and more";
        let (text, calls) = split_answer(odd);
        assert_eq!(calls[0].arguments, "{\"a\": 1}");
        assert_eq!(text.as_deref(), Some("and more"));
    }

    #[test]
    fn arguments_come_out_as_they_are_written() {
        let answer = call_text("get_weather", "{\"city\": \"Pa}ris\", \"days\": [1, 2]}");
        let mut splitter = ToolCallSplitter::new();
        let mut seen = Vec::new();
        for (i, c) in answer.char_indices() {
            for piece in splitter.push(&c.to_string()) {
                seen.push((i, piece));
            }
        }
        assert!(splitter.finish().is_empty());
        let start = answer.find("{\"city").unwrap();
        // The call begins once its name and the arguments' brace are written...
        assert_eq!(
            seen[0],
            (
                start,
                AnswerPiece::CallStart {
                    index: 0,
                    name: "get_weather".into(),
                    arguments: "{".into()
                }
            )
        );
        // ...then each character of the arguments comes out with the token that wrote it,
        // a brace inside a string included, up to the brace that closes them.
        let arguments: String = seen[1..]
            .iter()
            .map(|(i, piece)| match piece {
                AnswerPiece::Arguments { index: 0, text } => {
                    assert_eq!(
                        answer[*i..].chars().next().map(String::from),
                        Some(text.clone())
                    );
                    text.as_str()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(arguments, "\"city\": \"Pa}ris\", \"days\": [1, 2]}");
        assert_eq!(splitter.calls(), 1);
        // One token that writes a call whole gives one piece.
        let mut splitter = ToolCallSplitter::new();
        assert_eq!(
            splitter.push(&answer),
            vec![AnswerPiece::CallStart {
                index: 0,
                name: "get_weather".into(),
                arguments: "{\"city\": \"Pa}ris\", \"days\": [1, 2]}".into()
            }]
        );
    }

    #[test]
    fn call_ids_differ() {
        let a = new_call_id();
        let b = new_call_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "call_".len() + 24);
    }
}
