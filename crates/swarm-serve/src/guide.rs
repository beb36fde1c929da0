//! Guided decoding: what an answer must be, checked a byte at a time so that the engine
//! samples only tokens that keep it possible.
//!
//! - JSON mode: one JSON object, or one of a schema ([`JsonPrefix`], [`SchemaPrefix`]).
//! - Function calling: [`ToolCallGuide`] lets the model write text (`tool_choice: auto`) or
//!   nothing else (`required`, a named function), and once a `<tool_call>` tag is open, only
//!   a call of a listed function whose arguments fit its schema, written in the layout of
//!   [`call_text`](crate::tools::call_text).

use std::sync::Arc;

use swarm_model::{JsonCheck, JsonPrefix, SchemaPrefix};

use crate::tools::{
    ToolChoice, ToolSet, CALL_HEAD, CALL_MIDDLE, CALL_SEPARATOR, CALL_TAIL, TOOL_CALL_OPEN,
};
use crate::validation::JsonFormat;

/// A check of an answer, with what the engine needs beyond [`JsonCheck`]: whether the turn
/// may end here, and whether tokens that are not text (chat markers) may come.
#[derive(Debug, Clone)]
pub enum AnswerGuide {
    Json(JsonGuide),
    Tools(Box<ToolCallGuide>),
}

impl AnswerGuide {
    pub fn json(format: &JsonFormat) -> Self {
        AnswerGuide::Json(JsonGuide::new(format))
    }

    pub fn tools(tools: Arc<ToolSet>) -> Self {
        AnswerGuide::Tools(Box::new(ToolCallGuide::new(tools)))
    }

    /// Whether an end-of-turn token may come now.
    pub fn may_end(&self) -> bool {
        match self {
            AnswerGuide::Json(g) => g.is_complete(),
            AnswerGuide::Tools(g) => g.may_end(),
        }
    }

    /// Whether the answer is free text here, where any token (special ones too) may come
    /// as it would without a guide, as long as its bytes are accepted.
    pub fn is_free_text(&self) -> bool {
        matches!(self, AnswerGuide::Tools(g) if matches!(g.phase, Phase::Text { .. }))
    }
}

impl JsonCheck for AnswerGuide {
    fn push_byte(&mut self, b: u8) -> bool {
        match self {
            AnswerGuide::Json(g) => g.push_byte(b),
            AnswerGuide::Tools(g) => g.push_byte(b),
        }
    }

    /// Whether the answer is whole: nothing may follow, the turn ends.
    fn is_complete(&self) -> bool {
        match self {
            AnswerGuide::Json(g) => g.is_complete(),
            AnswerGuide::Tools(g) => g.is_complete(),
        }
    }
}

/// Any JSON object, or an object of a schema.
#[derive(Debug, Clone)]
pub enum JsonGuide {
    Object(JsonPrefix),
    Schema(SchemaPrefix),
}

impl JsonGuide {
    pub fn new(format: &JsonFormat) -> Self {
        match format {
            JsonFormat::Object => JsonGuide::Object(JsonPrefix::new()),
            JsonFormat::Schema(schema) => JsonGuide::Schema(SchemaPrefix::new(schema.clone())),
        }
    }
}

impl JsonCheck for JsonGuide {
    fn push_byte(&mut self, b: u8) -> bool {
        match self {
            JsonGuide::Object(p) => p.push_byte(b),
            JsonGuide::Schema(p) => p.push_byte(b),
        }
    }

    fn is_complete(&self) -> bool {
        match self {
            JsonGuide::Object(p) => p.is_complete(),
            JsonGuide::Schema(p) => p.is_complete(),
        }
    }
}

/// Where a function-calling answer stands.
#[derive(Debug, Clone)]
pub struct ToolCallGuide {
    tools: Arc<ToolSet>,
    phase: Phase,
    /// Calls written whole.
    calls: usize,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Free text (`auto`); its last `matched` bytes are the start of `<tool_call>`.
    Text {
        matched: usize,
    },
    /// `pos` bytes of [`CALL_HEAD`] written.
    Head {
        pos: usize,
    },
    /// After a call, with more allowed (`required` with parallel calls): the answer ends,
    /// or [`CALL_SEPARATOR`] and another call follow.
    Between,
    /// Inside the name (after [`CALL_HEAD`]): `pos` bytes written, which begin each of the
    /// names in `left` (indices into the tool set).
    Name {
        pos: usize,
        left: Vec<usize>,
    },
    /// `pos` bytes of [`CALL_MIDDLE`] written after the name of `tool`.
    Middle {
        tool: usize,
        pos: usize,
    },
    Arguments(JsonGuide),
    /// `pos` bytes of [`CALL_TAIL`] written.
    Tail {
        pos: usize,
    },
    /// Nothing more may be written.
    Ended,
}

impl ToolCallGuide {
    pub fn new(tools: Arc<ToolSet>) -> Self {
        let phase = match tools.choice {
            ToolChoice::Auto => Phase::Text { matched: 0 },
            ToolChoice::Required | ToolChoice::Function(_) => Phase::Head { pos: 0 },
        };
        Self {
            tools,
            phase,
            calls: 0,
        }
    }

    /// Whether the turn may end: in free text, or between calls once one is written.
    pub fn may_end(&self) -> bool {
        matches!(
            self.phase,
            Phase::Text { .. } | Phase::Between | Phase::Ended
        )
    }

    /// Literal `bytes` at `pos`: the next position, or `None` if `b` breaks it.
    fn literal(bytes: &[u8], pos: usize, b: u8) -> Option<usize> {
        (bytes.get(pos) == Some(&b)).then_some(pos + 1)
    }

    /// After a call's closing tag.
    fn call_written(&mut self) {
        self.calls += 1;
        self.phase = if !self.tools.parallel {
            Phase::Ended
        } else if self.tools.choice == ToolChoice::Auto {
            Phase::Text { matched: 0 }
        } else {
            Phase::Between
        };
    }

    fn name_starts(&self) -> Phase {
        Phase::Name {
            pos: 0,
            left: self.tools.callable(),
        }
    }
}

impl JsonCheck for ToolCallGuide {
    fn push_byte(&mut self, b: u8) -> bool {
        match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Text { matched } => {
                let open = TOOL_CALL_OPEN.as_bytes();
                self.phase = if open[matched] == b {
                    if matched + 1 == open.len() {
                        Phase::Head { pos: open.len() }
                    } else {
                        Phase::Text {
                            matched: matched + 1,
                        }
                    }
                } else {
                    // `<` appears in the tag only at its start.
                    Phase::Text {
                        matched: usize::from(b == open[0]),
                    }
                };
                true
            }
            Phase::Head { pos } => match Self::literal(CALL_HEAD.as_bytes(), pos, b) {
                Some(next) if next == CALL_HEAD.len() => {
                    self.phase = self.name_starts();
                    true
                }
                Some(next) => {
                    self.phase = Phase::Head { pos: next };
                    true
                }
                None => false,
            },
            Phase::Between => {
                if CALL_SEPARATOR.as_bytes() != [b] {
                    return false;
                }
                self.phase = Phase::Head { pos: 0 };
                true
            }
            Phase::Name { pos, left } => {
                let name = |t: usize| self.tools.functions[t].name.as_bytes();
                // A name ends where the middle begins, with the name's closing quote (names
                // hold no quotes).
                if CALL_MIDDLE.as_bytes().first() == Some(&b) {
                    return match left.into_iter().find(|&t| name(t).len() == pos) {
                        Some(tool) => {
                            self.phase = Phase::Middle { tool, pos: 1 };
                            true
                        }
                        None => false,
                    };
                }
                let left: Vec<usize> = left
                    .into_iter()
                    .filter(|&t| name(t).get(pos) == Some(&b))
                    .collect();
                if left.is_empty() {
                    return false;
                }
                self.phase = Phase::Name { pos: pos + 1, left };
                true
            }
            Phase::Middle { tool, pos } => match Self::literal(CALL_MIDDLE.as_bytes(), pos, b) {
                Some(next) if next == CALL_MIDDLE.len() => {
                    self.phase =
                        Phase::Arguments(JsonGuide::new(&self.tools.functions[tool].arguments));
                    true
                }
                Some(next) => {
                    self.phase = Phase::Middle { tool, pos: next };
                    true
                }
                None => false,
            },
            Phase::Arguments(mut arguments) => {
                if !arguments.push_byte(b) {
                    return false;
                }
                self.phase = if arguments.is_complete() {
                    Phase::Tail { pos: 0 }
                } else {
                    Phase::Arguments(arguments)
                };
                true
            }
            Phase::Tail { pos } => match Self::literal(CALL_TAIL.as_bytes(), pos, b) {
                Some(next) if next == CALL_TAIL.len() => {
                    self.call_written();
                    true
                }
                Some(next) => {
                    self.phase = Phase::Tail { pos: next };
                    true
                }
                None => false,
            },
            Phase::Ended => false,
        }
    }

    /// Whether nothing more may be written (one call made, parallel calls off).
    fn is_complete(&self) -> bool {
        matches!(self.phase, Phase::Ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{call_text, resolve_tools, split_answer};
    use serde_json::{json, Value};

    fn tools(choice: Value, parallel: bool) -> Arc<ToolSet> {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city", "unit"]}}},
            {"type": "function", "function": {"name": "get_time",
                "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get"}}
        ]);
        Arc::new(
            resolve_tools(Some(&tools), Some(&choice), Some(&json!(parallel)))
                .unwrap()
                .unwrap(),
        )
    }

    /// Whether the guide takes `text` whole, and whether the turn may then end / must end.
    fn run(guide: &AnswerGuide, text: &str) -> Option<(bool, bool)> {
        let mut g = guide.clone();
        g.push(text.as_bytes())
            .then(|| (g.may_end(), g.is_complete()))
    }

    const WEATHER: &str = "{\"city\": \"Paris\", \"unit\": \"c\"}";

    #[test]
    fn required_takes_only_calls_of_listed_functions() {
        let g = AnswerGuide::tools(tools(json!("required"), true));
        assert!(!g.may_end(), "a call is required");
        assert!(!g.is_free_text());
        let one = call_text("get_weather", WEATHER);
        assert_eq!(run(&g, &one), Some((true, false)));
        let two = format!("{one}\n{}", call_text("get_time", "{\"zone\": \"CET\"}"));
        assert_eq!(run(&g, &two), Some((true, false)));
        assert_eq!(
            run(&g, &format!("{two}\n{}", call_text("get", "{}"))),
            Some((true, false))
        );
        for broken in [
            "Sure".to_string(),
            call_text("get_wether", WEATHER),
            // `get` is a name, but not this one's prefix once the quote closes it.
            call_text("get_", "{}"),
            // Keys in `required`'s order, the enum kept.
            call_text("get_weather", "{\"unit\": \"c\", \"city\": \"Paris\"}"),
            call_text("get_weather", "{\"city\": \"Paris\", \"unit\": \"k\"}"),
            call_text("get", "{\"x\": 1}"),
            format!("{one} and more"),
        ] {
            assert_eq!(run(&g, &broken), None, "{broken}");
        }
        // Non-strict parameters, guided leniently: `zone` is optional, nothing else goes.
        assert!(run(&g, &call_text("get_time", "{}")).is_some());
        assert!(run(&g, &call_text("get_time", "{\"zone\": \"CET\"}")).is_some());
        assert!(run(&g, &call_text("get_time", "{\"anything\": 1}")).is_none());
        assert!(run(&g, &call_text("get_time", "[1]")).is_none());
    }

    #[test]
    fn one_call_ends_the_answer_without_parallel_calls() {
        let g = AnswerGuide::tools(tools(json!("required"), false));
        let one = call_text("get", "{}");
        assert_eq!(run(&g, &one), Some((true, true)));
        assert_eq!(run(&g, &format!("{one}\n")), None);
    }

    #[test]
    fn a_named_function_is_the_only_one_allowed() {
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let g = AnswerGuide::tools(tools(named, true));
        assert!(run(&g, &call_text("get_time", "{}")).is_some());
        assert!(run(&g, &call_text("get_weather", WEATHER)).is_none());
        assert!(run(&g, &call_text("get", "{}")).is_none());
    }

    #[test]
    fn auto_is_free_text_until_a_call_opens() {
        let g = AnswerGuide::tools(tools(json!("auto"), true));
        assert!(g.may_end() && g.is_free_text());
        assert_eq!(run(&g, "It is sunny. <b>ok</b> <tool"), Some((true, false)));
        let mut inside = g.clone();
        assert!(inside.push(b"Let me look. <tool_call>"));
        assert!(!inside.is_free_text() && !inside.may_end());
        // Inside the tag, only the call's own layout.
        assert!(!inside.accepts(b" {"));
        assert!(inside.accepts(b"\n{\"name\": \"get_w"));
        let answer = format!(
            "Let me look. {}\nThen {}",
            call_text("get_weather", WEATHER),
            call_text("get", "{}")
        );
        assert_eq!(run(&g, &answer), Some((true, false)));
        let (text, calls) = split_answer(&answer);
        assert_eq!(text.as_deref(), Some("Let me look. Then "));
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, WEATHER);
        // A token that completes the tag and runs on is checked past it.
        let mut half = g.clone();
        assert!(half.push(b"<tool_"));
        assert!(half.accepts(b"call>\n{\"na"));
        assert!(!half.accepts(b"call> {"));
        assert!(half.accepts(b"cat>"), "not the tag: free text");
    }

    #[test]
    fn json_guides_end_when_the_object_closes() {
        let g = AnswerGuide::json(&JsonFormat::Object);
        assert!(!g.may_end() && !g.is_free_text());
        assert_eq!(run(&g, "{\"a\": 1}"), Some((true, true)));
        assert_eq!(run(&g, "{\"a\": "), Some((false, false)));
    }
}
