//! Log-probabilities in OpenAI's two formats: the engine's [`TokenLogprob`]s as a chat
//! choice's `logprobs.content`, or as a completion choice's legacy parallel lists with each
//! token's offset in the text.

use crate::engine::{PromptLogprobs, TokenLogprob};
use crate::openai::{
    ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs, TopLogprobMap,
};

/// What a token the model rules out (`-inf`) is reported as: JSON has no infinity, and
/// OpenAI-compatible servers use this floor.
pub const LOGPROB_FLOOR: f32 = -9999.0;

fn reported(logprob: f32) -> f32 {
    if logprob.is_nan() {
        LOGPROB_FLOOR
    } else {
        logprob.max(LOGPROB_FLOOR)
    }
}

/// A token's text: U+FFFD stands in for bytes that are part of a character.
fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tokens` as a chat choice's (or chunk's) `logprobs`.
pub fn chat_logprobs(tokens: &[TokenLogprob]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: token_text(&t.bytes),
                logprob: reported(t.logprob),
                bytes: t.bytes.clone(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|a| ChatTopLogprob {
                        token: token_text(&a.bytes),
                        logprob: reported(a.logprob),
                        bytes: a.bytes.clone(),
                    })
                    .collect(),
            })
            .collect(),
        refusal: None,
    }
}

/// Where the next token of a choice starts in its text, in characters, as tokens stream by.
/// Counted on the bytes, so that a character split over two tokens counts once (its second
/// token starts inside it, at the character's own offset).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOffset {
    characters: usize,
}

impl TextOffset {
    /// The offset of a token with these bytes; moves past them.
    pub fn advance(&mut self, bytes: &[u8]) -> usize {
        // Every byte but a UTF-8 continuation byte (0b10xx_xxxx) starts a character.
        let continues = |b: &u8| b & 0xC0 == 0x80;
        let start = match bytes.first() {
            // The rest of a character begun by an earlier token: that character's offset.
            Some(b) if continues(b) => self.characters.saturating_sub(1),
            _ => self.characters,
        };
        self.characters += bytes.iter().filter(|b| !continues(b)).count();
        start
    }
}

/// `tokens` as a completion choice's (or chunk's) `logprobs`; `offset` carries on from the
/// choice's earlier tokens.
pub fn completion_logprobs(tokens: &[TokenLogprob], offset: &mut TextOffset) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        out.tokens.push(token_text(&t.bytes));
        out.token_logprobs.push(Some(reported(t.logprob)));
        let mut top: Vec<(String, f32)> = Vec::with_capacity(t.top.len());
        for a in &t.top {
            let text = token_text(&a.bytes);
            // Most likely first: a text already listed keeps its higher log-probability.
            if !top.iter().any(|(seen, _)| *seen == text) {
                top.push((text, reported(a.logprob)));
            }
        }
        out.top_logprobs.push(Some(TopLogprobMap(top)));
        out.text_offset.push(offset.advance(&t.bytes));
    }
    out
}

/// An echoed prompt's tokens as a completion's `logprobs`, its first token with null
/// log-probabilities (OpenAI's format); `offset` then carries on into the answer.
pub fn echo_logprobs(prompt: &PromptLogprobs, offset: &mut TextOffset) -> CompletionLogprobs {
    let mut out = CompletionLogprobs {
        tokens: vec![token_text(&prompt.first_token)],
        token_logprobs: vec![None],
        top_logprobs: vec![None],
        text_offset: vec![offset.advance(&prompt.first_token)],
    };
    out.append(completion_logprobs(&prompt.rest, offset));
    out
}

impl CompletionLogprobs {
    /// Appends `later`'s tokens after these.
    pub fn append(&mut self, later: CompletionLogprobs) {
        self.tokens.extend(later.tokens);
        self.token_logprobs.extend(later.token_logprobs);
        self.top_logprobs.extend(later.top_logprobs);
        self.text_offset.extend(later.text_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TopLogprob;

    fn token(bytes: &[u8], logprob: f32, top: &[(&[u8], f32)]) -> TokenLogprob {
        TokenLogprob {
            bytes: bytes.to_vec(),
            logprob,
            top: top
                .iter()
                .map(|&(b, l)| TopLogprob {
                    bytes: b.to_vec(),
                    logprob: l,
                })
                .collect(),
        }
    }

    #[test]
    fn chat_format_keeps_bytes_and_floors_minus_infinity() {
        let snowman = "☃".as_bytes();
        let tokens = [
            token(b"Hi", -0.5, &[(b"Hi", -0.5), (b"Hello", -1.5)]),
            token(&snowman[..1], f32::NEG_INFINITY, &[]),
        ];
        let got = chat_logprobs(&tokens);
        assert_eq!(got.content.len(), 2);
        assert_eq!(got.content[0].token, "Hi");
        assert_eq!(got.content[0].bytes, b"Hi");
        assert_eq!(got.content[0].top_logprobs[1].token, "Hello");
        assert_eq!(got.content[1].token, "\u{FFFD}");
        assert_eq!(got.content[1].bytes, &snowman[..1]);
        assert_eq!(got.content[1].logprob, LOGPROB_FLOOR);
        let json = serde_json::to_value(&got).unwrap();
        assert_eq!(json["content"][1]["bytes"], serde_json::json!([0xE2]));
        assert!(json["refusal"].is_null());
    }

    #[test]
    fn completion_offsets_count_characters_across_split_tokens() {
        let snowman = "☃".as_bytes();
        let tokens = [
            token(b"a", -0.1, &[]),
            token(&snowman[..2], -0.2, &[]),
            token(&snowman[2..], -0.3, &[]),
            token(b" b", -0.4, &[]),
        ];
        let mut offset = TextOffset::default();
        let first = completion_logprobs(&tokens[..2], &mut offset);
        let rest = completion_logprobs(&tokens[2..], &mut offset);
        // "a☃ b": a at 0, the snowman's two tokens at 1, " b" at 2.
        assert_eq!(first.text_offset, [0, 1]);
        assert_eq!(rest.text_offset, [1, 2]);
        assert_eq!(first.token_logprobs, [Some(-0.1), Some(-0.2)]);
        assert_eq!(rest.tokens, ["\u{FFFD}", " b"]);
    }

    #[test]
    fn completion_top_lists_a_shared_text_once_in_order() {
        let tokens = [token(
            b"x",
            -0.1,
            &[(b"x", -0.1), (&[0xE2], -2.0), (b"y", -2.5), (&[0xE3], -3.0)],
        )];
        let got = completion_logprobs(&tokens, &mut TextOffset::default());
        let json = serde_json::to_string(&got.top_logprobs[0].as_ref().unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"x":-0.1,"\ufffd":-2.0,"y":-2.5}"#.replace("\\ufffd", "\u{FFFD}")
        );
    }

    #[test]
    fn an_echoed_prompt_starts_with_a_null_then_the_answer_follows() {
        let prompt = PromptLogprobs {
            first_token: b"The".to_vec(),
            rest: vec![token(b" sky", -2.0, &[(b" sky", -2.0)])],
        };
        let mut offset = TextOffset::default();
        let mut got = echo_logprobs(&prompt, &mut offset);
        got.append(completion_logprobs(
            &[token(b" is", -0.5, &[])],
            &mut offset,
        ));
        assert_eq!(got.tokens, ["The", " sky", " is"]);
        assert_eq!(got.token_logprobs, [None, Some(-2.0), Some(-0.5)]);
        assert_eq!(got.text_offset, [0, 3, 7]);
        let json = serde_json::to_value(&got).unwrap();
        assert!(json["token_logprobs"][0].is_null() && json["top_logprobs"][0].is_null());
        assert_eq!(json["top_logprobs"][1], serde_json::json!({" sky": -2.0}));
    }
}
