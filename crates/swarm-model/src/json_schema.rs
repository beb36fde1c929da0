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
//!
//! [`JsonSchema::compile_lenient`] reads the schemas that function-calling clients send
//! without `strict` (OpenAI promises nothing about those arguments): properties left out of
//! `required` are optional, `additionalProperties` is read as false, an object without
//! `properties` is any object, and keywords that only narrow values (`minimum`, `pattern`,
//! `format`, `minItems`, ...) are not enforced. What it guides the model to write is then
//! of the schema's shape, if not always within its bounds.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::json_prefix::{number_byte, string_byte, NumberPart, StringByte, StringEscape};
use crate::json_prefix::{JsonCheck, JsonPrefix, MAX_DEPTH, MAX_WHITESPACE_RUN};

/// A compiled schema: nodes in an arena, so that a checker's state is a few indices.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    nodes: Vec<Node>,
    root: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// Properties in the order they are written: `required`'s first, then optional ones (by
    /// name), which may be left out.
    Object(Vec<Property>),
    /// Any JSON object (a lenient schema's object without `properties`).
    AnyObject,
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

#[derive(Debug, Clone, PartialEq)]
struct Property {
    /// JSON-encoded, quotes included.
    key: Vec<u8>,
    node: usize,
    required: bool,
}

/// Keywords that only narrow the values of a shape: not enforced by a lenient schema.
const NARROWING: [&str; 16] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
];

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
    /// Compiles `schema` in OpenAI's strict subset, whose root must be an object; an
    /// unsupported keyword or shape is an error naming where it is (`#/properties/name/...`).
    pub fn compile(schema: &Value) -> Result<Self> {
        Self::compile_with(schema, false)
    }

    /// Compiles a schema sent without `strict` (a function's `parameters`): optional
    /// properties, `additionalProperties` read as false, free-form objects, and narrowing
    /// keywords ignored (see the module's documentation). Shapes it cannot guide (`oneOf`,
    /// a member of `anyOf` of the same kind as an earlier one is dropped, `not`, ...) are
    /// still errors.
    pub fn compile_lenient(schema: &Value) -> Result<Self> {
        Self::compile_with(schema, true)
    }

    fn compile_with(schema: &Value, lenient: bool) -> Result<Self> {
        let mut c = Compiler {
            root: schema,
            nodes: Vec::new(),
            lenient,
        };
        let root = c.node(schema, "#", 0)?;
        let compiled = Self {
            nodes: c.nodes,
            root,
        };
        if !matches!(compiled.nodes[root], Node::Object(_) | Node::AnyObject) {
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
    lenient: bool,
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
                )
                || (self.lenient && NARROWING.contains(&key.as_str()));
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
                if !self.lenient && o.get("additionalProperties").is_some_and(|a| a != false) {
                    return Err(invalid(path, "`additionalProperties` must be false"));
                }
                let empty = serde_json::Map::new();
                let properties = match o.get("properties") {
                    // A free-form object.
                    None if self.lenient
                        && o.get("additionalProperties") != Some(&false.into()) =>
                    {
                        return Ok(self.push(Node::AnyObject))
                    }
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
                let optional: Vec<&str> = properties
                    .keys()
                    .map(String::as_str)
                    .filter(|k| !required.contains(k))
                    .collect();
                if let (false, Some(missing)) = (self.lenient, optional.first()) {
                    return Err(invalid(
                        path,
                        format!("property `{missing}` must be in `required` (strict mode)"),
                    ));
                }
                let mut props = Vec::with_capacity(properties.len());
                let keys = required
                    .iter()
                    .map(|k| (*k, true))
                    .chain(optional.iter().map(|k| (*k, false)));
                for (key, is_required) in keys {
                    let schema = properties.get(key).ok_or_else(|| {
                        invalid(path, format!("`required` names `{key}`, not a property"))
                    })?;
                    let id = self.node(schema, &format!("{path}/properties/{key}"), refs)?;
                    props.push(Property {
                        key: encode(key),
                        node: id,
                        required: is_required,
                    });
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
        if self.lenient {
            // The first member of each kind is the one guided.
            let mut seen = Vec::new();
            members.retain(|&m| {
                let class = first_class(&self.nodes[m]);
                let new = !seen.contains(&class);
                seen.push(class);
                new
            });
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
        Node::Object(_) | Node::AnyObject => b'{',
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
    /// Object node `node` at property `prop` (see [`ObjectPhase`] for which).
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
    /// Right after `{`: a key from `prop` (0) on, or `}` when no property is required.
    Open,
    /// `pos` bytes of a key matched, the same bytes as the first `pos` of `cand`'s key;
    /// the key is one of `cand` and the properties after it, up to the next required one
    /// (`prop` is where the candidates started).
    Key { pos: usize, cand: usize },
    /// After property `prop`'s key.
    Colon,
    /// After property `prop`'s value: `,` (when a property follows) or `}` (when none that
    /// follows is required).
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
    /// Inside a free-form object.
    Free(JsonPrefix),
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
            Lex::Free(mut object) => {
                if !object.push_byte(b) {
                    return false;
                }
                if object.is_complete() {
                    if self.stack.is_empty() {
                        self.lex = Lex::Complete;
                        return true;
                    }
                    return self.value_done();
                }
                self.lex = Lex::Free(object);
                return true;
            }
            Lex::Complete => return false,
            other => self.lex = other,
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            let in_key = matches!(
                self.stack.last(),
                Some(Frame::Object {
                    phase: ObjectPhase::Key { pos: 1.., .. },
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
        let schema = self.schema.clone();
        let Node::Object(props) = &schema.nodes[node] else {
            return false;
        };
        // Whether a property from `from` on must still be written.
        let required_from = |from: usize| props.iter().skip(from).any(|p| p.required);
        let frame = |prop, phase| Frame::Object { node, prop, phase };
        let (pos, cand) = match phase {
            ObjectPhase::Open if b == b'}' => return !required_from(0) && self.close(),
            ObjectPhase::Open => (0, 0),
            ObjectPhase::Key { pos, cand } => (pos, cand),
            ObjectPhase::Colon => {
                if b != b':' {
                    return false;
                }
                self.lex = Lex::Value(props[prop].node);
                return true;
            }
            ObjectPhase::AfterValue => {
                return match b {
                    b',' if prop + 1 < props.len() => {
                        self.set_top(frame(
                            prop + 1,
                            ObjectPhase::Key {
                                pos: 0,
                                cand: prop + 1,
                            },
                        ));
                        true
                    }
                    b'}' => !required_from(prop + 1) && self.close(),
                    _ => false,
                };
            }
        };
        // The candidates: `cand` and the keys after it, up to the next required one (which
        // may not be skipped), that start with the bytes matched so far.
        let written = &props.get(cand).map_or(&[][..], |p| &p.key[..pos]);
        let last = props
            .iter()
            .enumerate()
            .skip(cand)
            .find(|(_, p)| p.required)
            .map_or(props.len().saturating_sub(1), |(i, _)| i);
        let next = (cand..=last).filter(|&c| c < props.len()).find(|&c| {
            let key = &props[c].key;
            key.starts_with(written) && key.get(pos) == Some(&b)
        });
        let Some(next) = next else {
            return false;
        };
        // Keys end with their closing quote, which no other key has at that place.
        let phase = if props[next].key.len() == pos + 1 {
            ObjectPhase::Colon
        } else {
            ObjectPhase::Key {
                pos: pos + 1,
                cand: next,
            }
        };
        let prop = if phase == ObjectPhase::Colon {
            next
        } else {
            prop
        };
        self.set_top(frame(prop, phase));
        true
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
                phase: ObjectPhase::Open,
            }),
            (Node::AnyObject, b'{') => {
                let mut object = JsonPrefix::new();
                let started = object.push_byte(b);
                self.lex = Lex::Free(object);
                started
            }
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

    fn lenient(schema: Value) -> Arc<JsonSchema> {
        Arc::new(JsonSchema::compile_lenient(&schema).unwrap_or_else(|e| panic!("{schema}: {e}")))
    }

    /// A function's `parameters` as clients write them without `strict`.
    fn weather() -> Value {
        json!({"type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city"]})
    }

    #[test]
    fn optional_properties_may_be_left_out_in_order() {
        let s = lenient(weather());
        // `required` first, then the optional ones by name: days, unit.
        for text in [
            r#"{"city":"Paris"}"#,
            r#"{"city":"Paris","days":3}"#,
            r#"{"city":"Paris","unit":"c"}"#,
            r#"{ "city": "Paris", "days": 3, "unit": "f" }"#,
        ] {
            accepted(&s, text);
        }
        refused_at(&s, "{}", 1); // `city` is required
        refused_at(&s, r#"{"unit""#, 2); // required first
        refused_at(&s, r#"{"city":"P","unit":"c","days""#, 22); // in order: none after unit
        refused_at(&s, r#"{"city":"P",}"#, 12); // no trailing comma
        refused_at(&s, r#"{"city":"P","days":3,"unit":"c","#, 31); // none left
        refused_at(&s, r#"{"city":"P","days":"3""#, 19); // still an integer
                                                         // All optional: the empty object, or any of them in order.
        let s = lenient(
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}}}),
        );
        accepted(&s, "{}");
        accepted(&s, r#"{"b":true}"#);
        accepted(&s, r#"{"a":1,"b":false}"#);
        refused_at(&s, r#"{"b":true,"a""#, 9);
        // Strict mode still refuses optional properties and narrowing keywords.
        assert!(JsonSchema::compile(&weather()).is_err());
    }

    #[test]
    fn free_form_objects_take_any_object() {
        let s = lenient(json!({"type": "object",
            "properties": {"options": {"type": "object", "description": "anything"}, "n": {"type": "integer"}},
            "required": ["options", "n"], "additionalProperties": true}));
        accepted(&s, r#"{"options":{"x":[1,{"y":null}],"z":"}"},"n":2}"#);
        accepted(&s, r#"{"options":{},"n":2}"#);
        refused_at(&s, r#"{"options":[1]"#, 11);
        let any = lenient(json!({"type": "object"}));
        accepted(&any, r#"{"a": {"b": [true]}}"#);
        refused_at(&any, r#"{"a":1}}"#, 7);
        // Same-kind `anyOf` members: the first is guided.
        let s = lenient(
            json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"enum": ["x"]}]}}, "required": ["a"]}),
        );
        accepted(&s, r#"{"a":"free text"}"#);
        // What leniency cannot guide is still an error.
        for schema in [
            json!({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}),
            json!({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}),
            json!({"type": "string"}),
        ] {
            assert!(JsonSchema::compile_lenient(&schema).is_err(), "{schema}");
        }
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
