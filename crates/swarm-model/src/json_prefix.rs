//! JSON mode: an incremental check that the bytes generated so far can still become one
//! JSON object, so that a sampler can refuse the tokens that would break it.
//!
//! [`JsonPrefix`] is a pushdown automaton over bytes (RFC 8259: objects, arrays, strings with
//! escapes and UTF-8, numbers, `true` / `false` / `null`). It is cheap to clone (a state and
//! a small stack), which is how a sampler tries a token: clone, [`JsonCheck::push`] the
//! token's bytes, keep the clone if they all fit.
//!
//! Why not a general grammar engine: one fixed grammar, checked a token at a time on the
//! few tokens a sampler proposes (see [`Sampler::sample_allowed`](crate::Sampler::sample_allowed)),
//! needs no compiled token masks.

/// Containers open at once, at most: deeper nesting is refused (a runaway model otherwise
/// opens brackets until `max_tokens`).
pub const MAX_DEPTH: usize = 32;

/// Whitespace bytes in a row outside strings, at most: enough for indented output, not for
/// a model that pads forever.
pub const MAX_WHITESPACE_RUN: usize = 24;

/// Where a JSON text stands after some bytes: still a prefix of an object, or complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPrefix {
    state: State,
    /// The containers open, innermost last.
    stack: Vec<Container>,
    whitespace_run: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the top-level `{`.
    Start,
    /// After `{`: a key or `}`.
    ObjectOpen,
    /// After `,` in an object: a key.
    ObjectKey,
    /// After a key: `:`.
    Colon,
    /// After `:`, after `[`, or after `,` in an array: a value (`]` too right after `[`).
    Value { array_open: bool },
    /// After a value inside a container: `,` or the container's closing bracket.
    AfterValue,
    /// Inside a string; `key` when it is an object's key.
    String { key: bool, escape: StringEscape },
    /// Inside a number.
    Number(NumberPart),
    /// Inside `true`, `false` or `null`: the bytes still to come.
    Literal(&'static [u8]),
    /// The top-level object is closed.
    Complete,
}

/// Where a string stands between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StringEscape {
    None,
    /// After `\`.
    Backslash,
    /// In `\uXXXX`, this many hex digits still to come.
    Unicode(u8),
    /// In a multi-byte UTF-8 character, this many continuation bytes still to come.
    Utf8(u8),
}

/// Where a number stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumberPart {
    /// After `-`.
    Minus,
    /// After a leading `0`.
    Zero,
    /// In the integer digits (not starting with 0).
    Integer,
    /// After `.`.
    Point,
    /// In the fraction's digits.
    Fraction,
    /// After `e` or `E`.
    Exponent,
    /// After the exponent's sign.
    ExponentSign,
    /// In the exponent's digits.
    ExponentDigits,
}

impl NumberPart {
    /// Whether the number may end here.
    pub(crate) fn may_end(self) -> bool {
        matches!(
            self,
            NumberPart::Zero
                | NumberPart::Integer
                | NumberPart::Fraction
                | NumberPart::ExponentDigits
        )
    }
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonPrefix {
    /// Nothing generated yet.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            stack: Vec::new(),
            whitespace_run: 0,
        }
    }
}

/// A check of generated text against the shape it must take (any JSON object:
/// [`JsonPrefix`]; an object of a schema: [`SchemaPrefix`](crate::SchemaPrefix)), a byte at
/// a time. Cheap to clone, which is how a token is tried.
pub trait JsonCheck: Clone {
    /// Feeds one byte; `false` (and the state left somewhere inside) if it breaks the shape.
    fn push_byte(&mut self, b: u8) -> bool;

    /// Whether the text is whole: only its end may follow.
    fn is_complete(&self) -> bool;

    /// Feeds `bytes`; `false` if they break the shape. Try on a clone.
    fn push(&mut self, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.push_byte(b))
    }

    /// Whether `bytes` would continue the text, without changing it.
    fn accepts(&self, bytes: &[u8]) -> bool {
        self.clone().push(bytes)
    }
}

impl JsonCheck for JsonPrefix {
    /// Whether the top-level object is closed.
    fn is_complete(&self) -> bool {
        self.state == State::Complete
    }

    fn push_byte(&mut self, b: u8) -> bool {
        let whitespace = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.state {
            State::String { key, escape } => return self.string_byte(key, escape, b),
            State::Literal(rest) => {
                if rest.first() != Some(&b) {
                    return false;
                }
                self.state = if rest.len() == 1 {
                    State::AfterValue
                } else {
                    State::Literal(&rest[1..])
                };
                return true;
            }
            State::Number(part) => {
                if let Some(next) = number_byte(part, b) {
                    self.state = State::Number(next);
                    return true;
                }
                if !part.may_end() {
                    return false;
                }
                // The byte ends the number and is read as what follows a value.
                self.state = State::AfterValue;
            }
            _ => {}
        }
        if whitespace {
            if self.state == State::Complete || self.whitespace_run >= MAX_WHITESPACE_RUN {
                return false;
            }
            self.whitespace_run += 1;
            return true;
        }
        self.whitespace_run = 0;
        match (self.state, b) {
            (State::Start, b'{') => self.open(Container::Object),
            (State::ObjectOpen, b'}') => self.close(Container::Object),
            (State::ObjectOpen | State::ObjectKey, b'"') => {
                self.state = State::String {
                    key: true,
                    escape: StringEscape::None,
                };
                true
            }
            (State::Colon, b':') => {
                self.state = State::Value { array_open: false };
                true
            }
            (State::Value { array_open: true }, b']') => self.close(Container::Array),
            (State::Value { .. }, _) => self.value_byte(b),
            (State::AfterValue, b',') => {
                self.state = match self.stack.last() {
                    Some(Container::Object) => State::ObjectKey,
                    Some(Container::Array) => State::Value { array_open: false },
                    None => return false,
                };
                true
            }
            (State::AfterValue, b'}') => self.close(Container::Object),
            (State::AfterValue, b']') => self.close(Container::Array),
            _ => false,
        }
    }
}

impl JsonPrefix {
    /// The first byte of a value.
    fn value_byte(&mut self, b: u8) -> bool {
        self.state = match b {
            b'{' => return self.open(Container::Object),
            b'[' => return self.open(Container::Array),
            b'"' => State::String {
                key: false,
                escape: StringEscape::None,
            },
            b'-' => State::Number(NumberPart::Minus),
            b'0' => State::Number(NumberPart::Zero),
            b'1'..=b'9' => State::Number(NumberPart::Integer),
            b't' => State::Literal(b"rue"),
            b'f' => State::Literal(b"alse"),
            b'n' => State::Literal(b"ull"),
            _ => return false,
        };
        true
    }

    fn open(&mut self, container: Container) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        self.stack.push(container);
        self.state = match container {
            Container::Object => State::ObjectOpen,
            Container::Array => State::Value { array_open: true },
        };
        true
    }

    fn close(&mut self, container: Container) -> bool {
        if self.stack.last() != Some(&container) {
            return false;
        }
        self.stack.pop();
        self.state = if self.stack.is_empty() {
            State::Complete
        } else {
            State::AfterValue
        };
        true
    }

    fn string_byte(&mut self, key: bool, escape: StringEscape, b: u8) -> bool {
        match string_byte(escape, b) {
            StringByte::Continue(escape) => {
                self.state = State::String { key, escape };
                true
            }
            StringByte::End => {
                self.state = if key { State::Colon } else { State::AfterValue };
                true
            }
            StringByte::Invalid => false,
        }
    }
}

/// What byte `b` does to a string.
pub(crate) enum StringByte {
    Continue(StringEscape),
    /// The closing quote.
    End,
    Invalid,
}

/// Byte `b` of a string, after `escape`: escapes, and whole UTF-8 characters.
pub(crate) fn string_byte(escape: StringEscape, b: u8) -> StringByte {
    let next = match escape {
        StringEscape::None => match b {
            b'"' => return StringByte::End,
            b'\\' => StringEscape::Backslash,
            0x00..=0x1F => return StringByte::Invalid,
            0x20..=0x7F => StringEscape::None,
            // UTF-8 lead bytes of 2, 3 and 4-byte characters (C0, C1 and F5-FF never
            // start one).
            0xC2..=0xDF => StringEscape::Utf8(1),
            0xE0..=0xEF => StringEscape::Utf8(2),
            0xF0..=0xF4 => StringEscape::Utf8(3),
            _ => return StringByte::Invalid,
        },
        StringEscape::Backslash => match b {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => StringEscape::None,
            b'u' => StringEscape::Unicode(4),
            _ => return StringByte::Invalid,
        },
        StringEscape::Unicode(left) => {
            if !b.is_ascii_hexdigit() {
                return StringByte::Invalid;
            }
            if left == 1 {
                StringEscape::None
            } else {
                StringEscape::Unicode(left - 1)
            }
        }
        StringEscape::Utf8(left) => {
            if b & 0xC0 != 0x80 {
                return StringByte::Invalid;
            }
            if left == 1 {
                StringEscape::None
            } else {
                StringEscape::Utf8(left - 1)
            }
        }
    };
    StringByte::Continue(next)
}

/// The part of a number after byte `b`, if `b` continues it.
pub(crate) fn number_byte(part: NumberPart, b: u8) -> Option<NumberPart> {
    use NumberPart::*;
    Some(match (part, b) {
        (Minus, b'0') => Zero,
        (Minus, b'1'..=b'9') => Integer,
        (Integer, b'0'..=b'9') => Integer,
        (Zero | Integer, b'.') => Point,
        (Point | Fraction, b'0'..=b'9') => Fraction,
        (Zero | Integer | Fraction, b'e' | b'E') => Exponent,
        (Exponent, b'+' | b'-') => ExponentSign,
        (Exponent | ExponentSign | ExponentDigits, b'0'..=b'9') => ExponentDigits,
        _ => return None,
    })
}

/// Every prefix of `text` is accepted by `check` byte by byte, and the whole is complete
/// exactly at its end (the tests of both checkers).
#[cfg(test)]
pub(crate) fn accepted_whole_by(mut check: impl JsonCheck, text: &str) {
    for (i, &b) in text.as_bytes().iter().enumerate() {
        assert!(!check.is_complete(), "{text:?} complete before byte {i}");
        assert!(
            check.push_byte(b),
            "{text:?} refused at byte {i} ({:?})",
            b as char
        );
    }
    assert!(check.is_complete(), "{text:?} not complete");
}

/// `check` refuses `text` at byte `at`, every byte before it accepted.
#[cfg(test)]
pub(crate) fn refused_at_by(mut check: impl JsonCheck, text: &str, at: usize) {
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let ok = check.push_byte(b);
        assert_eq!(ok, i < at, "{text:?} at byte {i} ({:?})", b as char);
        if !ok {
            return;
        }
    }
    panic!("{text:?} has no byte {at}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted_whole(text: &str) {
        accepted_whole_by(JsonPrefix::new(), text);
    }

    fn refused_at(text: &str, at: usize) {
        refused_at_by(JsonPrefix::new(), text, at);
    }

    #[test]
    fn objects_that_serde_json_reads_are_accepted() {
        for text in [
            "{}",
            " {\n  \"a\": 1\n}",
            r#"{"a":[1,-2.5e+3,0,0.25,1E9,true,false,null,"x",{},[]]}"#,
            r#"{"name": "Grüße \"x\" \\ \/ \n \u00e9 🦀", "n": {"m": [[[]]]}}"#,
            r#"{"":-0}"#,
        ] {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
                .unwrap_or_else(|e| panic!("the test's own {text:?}: {e}"));
            accepted_whole(text);
        }
    }

    #[test]
    fn breaks_are_refused_where_they_happen() {
        refused_at("[1]", 0); // the top level is an object
        refused_at("x", 0);
        refused_at("{a", 1); // keys are strings
        refused_at(r#"{"a" 1"#, 5);
        refused_at(r#"{"a":01"#, 6); // no leading zeros
        refused_at(r#"{"a":1.}"#, 7);
        refused_at(r#"{"a":-}"#, 6);
        refused_at(r#"{"a":1,}"#, 7); // no trailing commas
        refused_at(r#"{"a":[1,]}"#, 8);
        refused_at(r#"{"a":tru}"#, 8);
        refused_at(r#"{"a":"\x"}"#, 7);
        refused_at(r#"{"a":"\u12g4"}"#, 10);
        refused_at("{\"a\":\"\n\"}", 6); // raw control characters
        refused_at(r#"{"a":1]"#, 6); // mismatched brackets
        refused_at("{} ", 2); // nothing after the object
        refused_at("{}x", 2);
    }

    #[test]
    fn strings_hold_only_whole_utf8_characters() {
        let mut p = JsonPrefix::new();
        assert!(p.push(b"{\"k\":\""));
        let crab = "🦀".as_bytes();
        assert!(p.accepts(&crab[..2]));
        assert!(!p.accepts(&[crab[0], b'x'])); // a lead byte then no continuation
        assert!(!p.accepts(&[0x80])); // a continuation with no lead
        assert!(!p.accepts(&[0xC0, 0x80])); // overlong
        assert!(!p.accepts(&[0xFF]));
        assert!(p.push(crab));
        assert!(p.push(b"\"}"));
        assert!(p.is_complete());
    }

    #[test]
    fn depth_and_whitespace_are_bounded() {
        let mut p = JsonPrefix::new();
        assert!(p.push(b"{\"a\":"));
        for _ in 1..MAX_DEPTH {
            assert!(p.push(b"["));
        }
        assert!(!p.accepts(b"["));
        assert!(!p.accepts(b"{"));

        let mut p = JsonPrefix::new();
        assert!(p.push(&[b' '; MAX_WHITESPACE_RUN]));
        assert!(!p.accepts(b" "));
        assert!(p.push(b"{"));
        assert!(p.push(&[b'\n'; MAX_WHITESPACE_RUN]));
        // Whitespace inside strings is text, not padding.
        assert!(p.push(b"\""));
        assert!(p.push(&[b' '; 100]));
    }

    #[test]
    fn accepts_does_not_move_the_state() {
        let mut p = JsonPrefix::new();
        assert!(p.push(b"{\"a\":12"));
        let before = p.clone();
        assert!(p.accepts(b"3}"));
        assert!(!p.accepts(b"x"));
        assert_eq!(p, before);
        // A number ends at the byte that follows it.
        assert!(p.push(b"}"));
        assert!(p.is_complete());
    }
}
