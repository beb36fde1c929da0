//! Structured outputs: a JSON Schema, in the subset OpenAI's strict mode takes, compiled
//! into a check of the bytes generated so far, as [`JsonPrefix`](crate::JsonPrefix) checks
//! plain JSON.
//!
//! The subset: `type` (one or a list), `object` with `properties` whose keys all appear in
//! `required` (written in `required`'s order, none other: `additionalProperties` false),
//! `array` with `items`, `string`, `number`, `integer`, `boolean`, `null`, `enum` and
//! `const` of strings, `anyOf` whose members start with different characters, `$ref` to
//! `#/$defs/...` (not recursive). Annotations (`title`, `description`, `default`,
//! `examples`) are accepted; any other keyword (`pattern`, `minimum`, `minItems`, ...) is
//! refused by name rather than not enforced.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::json_prefix::{number_byte, string_byte, NumberPart, StringByte, StringEscape};
use crate::json_prefix::{JsonCheck, MAX_DEPTH, MAX_WHITESPACE_RUN};

/// A compiled schema: nodes in an arena, so that a checker's state is a few indices.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Properties in the order they are written: each key JSON-encoded, quotes included.
    Object(Vec<(Vec<u8>, usize)>),
    Array(usize),
    String,
    /// The allowed strings, JSON-encoded, quotes included.
    Enum(Vec<Vec<u8>>),
    Number,
    Integer,
    Boolean,
    Null,
    /// Members told apart by their first byte.
    Union(Vec<usize>),
}

/// `$ref`s followed in a row, at most: deeper is taken for recursion.
const MAX_REF_DEPTH: usize = 32;

/// Keywords that describe and do not constrain.
const ANNOTATIONS: [&str; 6] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$comment",
];

impl JsonSchema {
    /// Compiles `schema`, whose root must be an object; an unsupported keyword or shape is
    /// an error naming where it is (`#/properties/name/...`).
    pub fn compile(schema: &Value) -> Result<Self> {
        let mut c = Compiler {
            root: schema,
            nodes: Vec::new(),
        };
        let root = c.node(schema, "#", 0)?;
        let compiled = Self {
            nodes: c.nodes,
            root,
        };
        if !matches!(compiled.nodes[root], Node::Object(_)) {
            return Err(invalid("#", "the root must be an object (`type: object`)"));
        }
        Ok(compiled)
    }
}

fn invalid(path: &str, problem: impl std::fmt::Display) -> ModelError {
    ModelError::Generation(format!("JSON schema {path}: {problem}"))
}

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn node(&mut self, v: &Value, path: &str, refs: usize) -> Result<usize> {
        let Some(o) = v.as_object() else {
            return Err(invalid(path, "a schema must be an object"));
        };
        if let Some(r) = o.get("$ref") {
            if refs >= MAX_REF_DEPTH {
                return Err(invalid(path, "recursive `$ref`s are not supported"));
            }
            let target = r
                .as_str()
                .and_then(|r| r.strip_prefix('#'))
                .and_then(|pointer| self.root.pointer(pointer))
                .ok_or_else(|| invalid(path, format!("`$ref` {r} does not resolve")))?;
            return self.node(target, path, refs + 1);
        }
        for key in o.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || matches!(
                    key.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "items"
                        | "enum"
                        | "const"
                        | "anyOf"
                        | "$defs"
                        | "definitions"
                        | "strict"
                );
            if !known {
                return Err(invalid(path, format!("`{key}` is not supported")));
            }
        }
        if let Some(members) = o.get("anyOf") {
            let members = members
                .as_array()
                .ok_or_else(|| invalid(path, "`anyOf` must be a list"))?;
            let ids = members
                .iter()
                .enumerate()
                .map(|(i, m)| self.node(m, &format!("{path}/anyOf/{i}"), refs))
                .collect::<Result<Vec<_>>>()?;
            return self.union(ids, path);
        }
        if let Some(values) = o
            .get("enum")
            .map(|e| e.as_array().cloned().unwrap_or_default())
        {
            return self.strings(&values, path, "enum");
        }
        if let Some(value) = o.get("const") {
            return self.strings(std::slice::from_ref(value), path, "const");
        }
        let types: Vec<&str> = match o.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return Err(invalid(path, "`type` is missing")),
        };
        if types.is_empty() {
            return Err(invalid(path, "`type` names no type"));
        }
        let ids = types
            .iter()
            .map(|t| self.typed(o, t, path, refs))
            .collect::<Result<Vec<_>>>()?;
        if ids.len() == 1 {
            Ok(ids[0])
        } else {
            self.union(ids, path)
        }
    }

    fn typed(
        &mut self,
        o: &serde_json::Map<String, Value>,
        t: &str,
        path: &str,
        refs: usize,
    ) -> Result<usize> {
        let node = match t {
            "object" => {
                if o.get("additionalProperties").is_some_and(|a| a != false) {
                    return Err(invalid(path, "`additionalProperties` must be false"));
                }
                let empty = serde_json::Map::new();
                let properties = match o.get("properties") {
                    None => &empty,
                    Some(p) => p
                        .as_object()
                        .ok_or_else(|| invalid(path, "`properties` must be an object"))?,
                };
                let required: Vec<&str> = match o.get("required") {
                    None => Vec::new(),
                    Some(r) => r
                        .as_array()
                        .ok_or_else(|| invalid(path, "`required` must be a list"))?
                        .iter()
                        .map(|k| {
                            k.as_str()
                                .ok_or_else(|| invalid(path, "`required` must list strings"))
                        })
                        .collect::<Result<_>>()?,
                };
                // Keys are written in `required`'s order: the properties' own order is lost
                // to JSON maps, and strict mode requires every one of them there.
                if let Some(missing) = properties.keys().find(|k| !required.contains(&k.as_str())) {
                    return Err(invalid(
                        path,
                        format!("property `{missing}` must be in `required` (strict mode)"),
                    ));
                }
                let mut props = Vec::with_capacity(required.len());
                for key in required {
                    let schema = properties.get(key).ok_or_else(|| {
                        invalid(path, format!("`required` names `{key}`, not a property"))
                    })?;
                    let id = self.node(schema, &format!("{path}/properties/{key}"), refs)?;
                    props.push((encode(key), id));
                }
                Node::Object(props)
            }
            "array" => {
                let items = o
                    .get("items")
                    .ok_or_else(|| invalid(path, "an array needs `items`"))?;
                Node::Array(self.node(items, &format!("{path}/items"), refs)?)
            }
            "string" => Node::String,
            "number" => Node::Number,
            "integer" => Node::Integer,
            "boolean" => Node::Boolean,
            "null" => Node::Null,
            other => return Err(invalid(path, format!("unknown type `{other}`"))),
        };
        Ok(self.push(node))
    }

    fn strings(&mut self, values: &[Value], path: &str, keyword: &str) -> Result<usize> {
        let strings = values
            .iter()
            .map(|v| {
                v.as_str()
                    .map(encode)
                    .ok_or_else(|| invalid(path, format!("`{keyword}` values must be strings")))
            })
            .collect::<Result<Vec<_>>>()?;
        if strings.is_empty() {
            return Err(invalid(path, format!("`{keyword}` allows nothing")));
        }
        Ok(self.push(Node::Enum(strings)))
    }

    fn union(&mut self, ids: Vec<usize>, path: &str) -> Result<usize> {
        // Flatten nested unions, and let numbers take integers' place.
        let mut members: Vec<usize> = Vec::new();
        for id in ids {
            match &self.nodes[id] {
                Node::Union(inner) => members.extend(inner.clone()),
                _ => members.push(id),
            }
        }
        if members.iter().any(|&m| self.nodes[m] == Node::Number) {
            members.retain(|&m| self.nodes[m] != Node::Integer);
        }
        for (i, &a) in members.iter().enumerate() {
            for &b in &members[i + 1..] {
                if first_class(&self.nodes[a]) == first_class(&self.nodes[b]) {
                    return Err(invalid(
                        path,
                        "`anyOf` or `type` members must start with different characters \
                         (two strings, two objects, ...)",
                    ));
                }
            }
        }
        Ok(self.push(Node::Union(members)))
    }
}

/// `s` as a JSON string, quotes included.
fn encode(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

/// What a value of this node starts with: nodes of one class cannot share a union.
fn first_class(node: &Node) -> u8 {
    match node {
        Node::Object(_) => b'{',
        Node::Array(_) => b'[',
        Node::String | Node::Enum(_) => b'"',
        Node::Number | Node::Integer => b'0',
        Node::Boolean => b't',
        Node::Null => b'n',
        Node::Union(_) => b'|',
    }
}

/// Where a text stands against a [`JsonSchema`]: still a prefix of a value it allows, or
/// complete. Cloned to try a token, as [`JsonPrefix`](crate::JsonPrefix) is.
#[derive(Debug, Clone)]
pub struct SchemaPrefix {
    schema: Arc<JsonSchema>,
    stack: Vec<Frame>,
    lex: Lex,
    whitespace_run: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Frame {
    /// Property `prop` of object node `node`.
    Object {
        node: usize,
        prop: usize,
        phase: ObjectPhase,
    },
    /// Inside an array of `items`.
    Array { items: usize, open: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ObjectPhase {
    /// Before the key of `prop` (or `}` for an object with no properties).
    Key,
    /// `pos` bytes of `prop`'s encoded key matched.
    InKey(usize),
    Colon,
    /// After `prop`'s value: `,` or `}`.
    AfterValue,
}

#[derive(Debug, Clone, PartialEq)]
enum Lex {
    /// Between tokens: the top frame says what may come.
    Structure,
    /// A value of this node starts at the next byte that is not whitespace.
    Value(usize),
    String(StringEscape),
    /// Inside one of an enum's strings: `pos` bytes matched of the candidates still left.
    Enum {
        node: usize,
        pos: usize,
        left: Vec<u16>,
    },
    Number {
        part: NumberPart,
        integer: bool,
    },
    Literal(&'static [u8]),
    Complete,
}

impl SchemaPrefix {
    /// Nothing generated yet.
    pub fn new(schema: Arc<JsonSchema>) -> Self {
        let root = schema.root;
        Self {
            schema,
            stack: Vec::new(),
            lex: Lex::Value(root),
            whitespace_run: 0,
        }
    }
}

impl JsonCheck for SchemaPrefix {
    /// Whether the root object is closed.
    fn is_complete(&self) -> bool {
        self.lex == Lex::Complete
    }

    fn push_byte(&mut self, b: u8) -> bool {
        match std::mem::replace(&mut self.lex, Lex::Structure) {
            Lex::String(escape) => {
                return match string_byte(escape, b) {
                    StringByte::Continue(next) => {
                        self.lex = Lex::String(next);
                        true
                    }
                    StringByte::End => self.value_done(),
                    StringByte::Invalid => false,
                }
            }
            Lex::Enum { node, pos, left } => return self.enum_byte(node, pos, left, b),
            Lex::Literal(rest) => {
                if rest.first() != Some(&b) {
                    return false;
                }
                if rest.len() == 1 {
                    return self.value_done();
                }
                self.lex = Lex::Literal(&rest[1..]);
                return true;
            }
            Lex::Number { part, integer } => {
                let next = number_byte(part, b)
                    .filter(|n| !integer || matches!(n, NumberPart::Integer | NumberPart::Zero));
                if let Some(next) = next {
                    self.lex = Lex::Number {
                        part: next,
                        integer,
                    };
                    return true;
                }
                if !part.may_end() || !self.value_done() {
                    return false;
                }
                // The byte after the number is read as what follows it.
                return self.push_byte(b);
            }
            Lex::Complete => return false,
            other => self.lex = other,
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            let in_key = matches!(
                self.stack.last(),
                Some(Frame::Object {
                    phase: ObjectPhase::InKey(_),
                    ..
                })
            );
            if in_key || self.whitespace_run >= MAX_WHITESPACE_RUN {
                return false;
            }
            self.whitespace_run += 1;
            return true;
        }
        self.whitespace_run = 0;
        if let Lex::Value(node) = self.lex {
            return self.value_start(node, b);
        }
        match self.stack.last().copied() {
            Some(Frame::Object { node, prop, phase }) => self.object_byte(node, prop, phase, b),
            Some(Frame::Array { items, open }) => match b {
                b']' => self.close(),
                b',' if !open => {
                    self.lex = Lex::Value(items);
                    true
                }
                _ if open => {
                    self.set_top(Frame::Array { items, open: false });
                    self.value_start(items, b)
                }
                _ => false,
            },
            None => false,
        }
    }
}

impl SchemaPrefix {
    fn object_byte(&mut self, node: usize, prop: usize, phase: ObjectPhase, b: u8) -> bool {
        let Node::Object(props) = &self.schema.nodes[node] else {
            return false;
        };
        let frame = |phase| Frame::Object { node, prop, phase };
        match phase {
            ObjectPhase::Key if props.is_empty() => b == b'}' && self.close(),
            ObjectPhase::Key | ObjectPhase::InKey(_) => {
                let pos = match phase {
                    ObjectPhase::InKey(p) => p,
                    _ => 0,
                };
                let key = &props[prop].0;
                if key.get(pos) != Some(&b) {
                    return false;
                }
                let next = if pos + 1 == key.len() {
                    ObjectPhase::Colon
                } else {
                    ObjectPhase::InKey(pos + 1)
                };
                self.set_top(frame(next));
                true
            }
            ObjectPhase::Colon => {
                if b != b':' {
                    return false;
                }
                self.lex = Lex::Value(props[prop].1);
                true
            }
            ObjectPhase::AfterValue => {
                if prop + 1 < props.len() {
                    if b != b',' {
                        return false;
                    }
                    self.set_top(Frame::Object {
                        node,
                        prop: prop + 1,
                        phase: ObjectPhase::Key,
                    });
                    true
                } else {
                    b == b'}' && self.close()
                }
            }
        }
    }

    /// The first byte `b` of a value of `node`.
    fn value_start(&mut self, node: usize, b: u8) -> bool {
        let schema = self.schema.clone();
        let node = match &schema.nodes[node] {
            Node::Union(members) => {
                let class = match b {
                    b'-' | b'0'..=b'9' => b'0',
                    b'f' => b't',
                    other => other,
                };
                match members
                    .iter()
                    .find(|&&m| first_class(&schema.nodes[m]) == class)
                {
                    Some(&m) => m,
                    None => return false,
                }
            }
            _ => node,
        };
        match (&schema.nodes[node], b) {
            (Node::Object(_), b'{') => self.open(Frame::Object {
                node,
                prop: 0,
                phase: ObjectPhase::Key,
            }),
            (Node::Array(items), b'[') => self.open(Frame::Array {
                items: *items,
                open: true,
            }),
            (Node::String, b'"') => {
                self.lex = Lex::String(StringEscape::None);
                true
            }
            (Node::Enum(values), b'"') => {
                self.lex = Lex::Enum {
                    node,
                    pos: 1,
                    left: (0..values.len() as u16).collect(),
                };
                true
            }
            (Node::Number | Node::Integer, b'-' | b'0'..=b'9') => {
                let part = match b {
                    b'-' => NumberPart::Minus,
                    b'0' => NumberPart::Zero,
                    _ => NumberPart::Integer,
                };
                self.lex = Lex::Number {
                    part,
                    integer: schema.nodes[node] == Node::Integer,
                };
                true
            }
            (Node::Boolean, b't') => {
                self.lex = Lex::Literal(b"rue");
                true
            }
            (Node::Boolean, b'f') => {
                self.lex = Lex::Literal(b"alse");
                true
            }
            (Node::Null, b'n') => {
                self.lex = Lex::Literal(b"ull");
                true
            }
            _ => false,
        }
    }

    fn enum_byte(&mut self, node: usize, pos: usize, left: Vec<u16>, b: u8) -> bool {
        let Node::Enum(values) = &self.schema.nodes[node] else {
            return false;
        };
        let left: Vec<u16> = left
            .into_iter()
            .filter(|&i| values[i as usize].get(pos) == Some(&b))
            .collect();
        if left.is_empty() {
            return false;
        }
        // A candidate ends with its closing quote, which no other one has at that place.
        if left.iter().any(|&i| values[i as usize].len() == pos + 1) {
            return self.value_done();
        }
        self.lex = Lex::Enum {
            node,
            pos: pos + 1,
            left,
        };
        true
    }

    fn open(&mut self, frame: Frame) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(frame);
        self.lex = Lex::Structure;
        true
    }

    fn close(&mut self) -> bool {
        self.stack.pop();
        if self.stack.is_empty() {
            self.lex = Lex::Complete;
            true
        } else {
            self.value_done()
        }
    }

    /// A value ended: its container moves past it.
    fn value_done(&mut self) -> bool {
        self.lex = Lex::Structure;
        match self.stack.last().copied() {
            Some(Frame::Object { node, prop, .. }) => {
                self.set_top(Frame::Object {
                    node,
                    prop,
                    phase: ObjectPhase::AfterValue,
                });
                true
            }
            Some(Frame::Array { items, .. }) => {
                self.set_top(Frame::Array { items, open: false });
                true
            }
            // The root is an object: a scalar never ends at the top level.
            None => false,
        }
    }

    fn set_top(&mut self, frame: Frame) {
        if let Some(top) = self.stack.last_mut() {
            *top = frame;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_prefix::{accepted_whole_by, refused_at_by};
    use serde_json::json;

    fn compiled(schema: Value) -> Arc<JsonSchema> {
        Arc::new(JsonSchema::compile(&schema).unwrap_or_else(|e| panic!("{schema}: {e}")))
    }

    fn accepted(schema: &Arc<JsonSchema>, text: &str) {
        accepted_whole_by(SchemaPrefix::new(schema.clone()), text);
    }

    fn refused_at(schema: &Arc<JsonSchema>, text: &str, at: usize) {
        refused_at_by(SchemaPrefix::new(schema.clone()), text, at);
    }

    /// What `client.beta.chat.completions.parse` sends for a Pydantic model with a nested
    /// model, an enum, an optional field and a list.
    fn person() -> Value {
        json!({
            "$defs": {
                "Address": {
                    "properties": {"city": {"title": "City", "type": "string"}},
                    "required": ["city"], "title": "Address", "type": "object",
                    "additionalProperties": false
                }
            },
            "properties": {
                "name": {"title": "Name", "type": "string"},
                "age": {"title": "Age", "type": "integer"},
                "role": {"enum": ["admin", "user", "guest"], "title": "Role", "type": "string"},
                "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "address": {"$ref": "#/$defs/Address"},
                "scores": {"items": {"type": "number"}, "type": "array"},
                "active": {"type": "boolean"}
            },
            "required": ["name", "age", "role", "nickname", "address", "scores", "active"],
            "title": "Person", "type": "object", "additionalProperties": false
        })
    }

    #[test]
    fn instances_of_a_pydantic_schema_are_accepted() {
        let s = compiled(person());
        for text in [
            r#"{"name":"Ann","age":31,"role":"admin","nickname":null,"address":{"city":"Paris"},"scores":[],"active":true}"#,
            "{\n  \"name\": \"B\\\"o\\u00e9 🦀\",\n  \"age\": -0,\n  \"role\": \"guest\",\n  \"nickname\": \"bo\",\n  \"address\": { \"city\": \"\" },\n  \"scores\": [1.5, -2e3, 0],\n  \"active\": false\n}",
        ] {
            serde_json::from_str::<Value>(text).unwrap();
            accepted(&s, text);
        }
    }

    #[test]
    fn what_the_schema_forbids_is_refused_where_it_happens() {
        let s = compiled(person());
        let head = r#"{"name":"Ann","age":"#;
        refused_at(&s, r#"{"age":"#, 2); // keys in `required`'s order
        refused_at(&s, &format!("{head}3.5"), head.len() + 1); // an integer
        refused_at(&s, &format!("{head}\"3\""), head.len()); // not a string
        let role = r#"{"name":"Ann","age":3,"role":"#;
        refused_at(&s, &format!("{role}\"adm1n\""), role.len() + 4); // not in the enum
        refused_at(&s, &format!("{role}\"user2\""), role.len() + 5);
        let nick = r#"{"name":"Ann","age":3,"role":"user","nickname":"#;
        refused_at(&s, &format!("{nick}1"), nick.len()); // string or null only
        let all = r#"{"name":"A","age":3,"role":"user","nickname":null,"address":{"city":"P"},"scores":[1],"active":true"#;
        refused_at(&s, &format!("{all},"), all.len()); // no more keys
        refused_at(&s, &format!("{all}}} "), all.len() + 1); // nothing after the root
        refused_at(&s, "[", 0);
    }

    #[test]
    fn unsupported_schemas_say_what_and_where() {
        for (schema, needle) in [
            (json!({"type": "string"}), "root must be an object"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}, "required": ["a"]}),
                "#/properties/a: `pattern`",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string"}}}),
                "`a` must be in `required`",
            ),
            (
                json!({"type": "object", "additionalProperties": true}),
                "additionalProperties",
            ),
            (
                json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}, "required": ["a"]}),
                "different characters",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "required": ["a"], "$defs": {"A": {"$ref": "#/$defs/A"}}}),
                "recursive",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/B"}}, "required": ["a"]}),
                "does not resolve",
            ),
            (
                json!({"type": "object", "properties": {"a": {"enum": [1, 2]}}, "required": ["a"]}),
                "must be strings",
            ),
            (
                json!({"type": "object", "properties": {"a": {}}, "required": ["a"]}),
                "`type` is missing",
            ),
        ] {
            let e = JsonSchema::compile(&schema).unwrap_err().to_string();
            assert!(e.contains(needle), "{schema}: {e}");
        }
    }

    #[test]
    fn an_object_without_properties_is_empty() {
        let s = compiled(
            json!({"type": "object", "properties": {}, "required": [], "additionalProperties": false}),
        );
        accepted(&s, "{ }");
        refused_at(&s, "{\"", 1);
    }

    #[test]
    fn integers_end_where_the_next_token_begins() {
        let s = compiled(
            json!({"type": "object", "properties": {"n": {"type": "integer"}, "m": {"type": ["number", "null"]}}, "required": ["n", "m"]}),
        );
        accepted(&s, r#"{"n":12 ,"m":-0.5e-3}"#);
        accepted(&s, r#"{"n":0,"m":null}"#);
        refused_at(&s, r#"{"n":1e"#, 6);
    }
}
