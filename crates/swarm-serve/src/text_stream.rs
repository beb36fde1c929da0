//! Incremental detokenisation with stop strings, for streaming.
//!
//! The text of a sequence is decoded from all its tokens at every step (so stop strings are
//! found across token boundaries and multi-token characters come out whole), and only text
//! that can no longer change is handed out: never an incomplete UTF-8 character
//! (`U+FFFD` at the end), never a suffix that could still begin a stop string. The streamed
//! pieces concatenate to exactly the final text. Same contract as `swarm_model::generate`,
//! which keeps its own copy private.

/// The decoded text of one sequence and how much of it was sent.
#[derive(Debug, Clone)]
pub(crate) struct TextStream {
    stop: Vec<String>,
    text: String,
    sent: usize,
}

impl TextStream {
    pub(crate) fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            sent: 0,
        }
    }

    /// Takes the full text decoded so far. Returns `(piece, stopped)`: the new final text,
    /// and whether a stop string was found (the text is then cut before it).
    pub(crate) fn update(&mut self, text: String) -> (String, bool) {
        self.text = text;
        if let Some(cut) = self
            .stop
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(cut);
            return (self.finish(), true);
        }
        let mut end = self.text.len();
        if self.text.ends_with('\u{FFFD}') {
            end = self.text.rfind('\u{FFFD}').unwrap_or(end);
        }
        let held = self
            .stop
            .iter()
            .map(|s| longest_suffix_prefix(&self.text[..end], s))
            .max()
            .unwrap_or(0);
        (self.take_until(end - held), false)
    }

    /// Everything not sent yet.
    pub(crate) fn finish(&mut self) -> String {
        self.take_until(self.text.len())
    }

    fn take_until(&mut self, end: usize) -> String {
        // Decoding more tokens may rarely rewrite earlier text: never resend, never split.
        if end <= self.sent
            || !self.text.is_char_boundary(self.sent)
            || !self.text.is_char_boundary(end)
        {
            return String::new();
        }
        let piece = self.text[self.sent..end].to_string();
        self.sent = end;
        piece
    }
}

/// Bytes of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = stop.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            let start = text.len() - n;
            text.is_char_boundary(start) && stop.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop_and_cuts_at_it() {
        let mut s = TextStream::new(vec!["END".into()]);
        assert_eq!(s.update("hello E".into()), ("hello ".into(), false));
        assert_eq!(s.update("hello EN".into()), (String::new(), false));
        assert_eq!(s.update("hello ENX".into()), ("ENX".into(), false));
        assert_eq!(
            s.update("hello ENX and END more".into()),
            (" and ".into(), true)
        );
    }

    #[test]
    fn never_splits_a_character() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.update("a\u{FFFD}".into()), ("a".into(), false));
        assert_eq!(s.update("aé".into()), ("é".into(), false));
        assert_eq!(s.finish(), "");
    }
}
