//! The tokenizer: a thin wrapper over the `tokenizers` crate with the special tokens a chat
//! model needs (BOS, EOS) attached.

use std::path::Path;

use crate::error::{ModelError, Result};

/// A text tokenizer with its special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer; `bos_token`/`eos_token` are token strings.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        Self {
            inner,
            bos_token,
            eos_token,
        }
    }

    /// Reads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::new(inner, None, None))
    }

    /// Sets the BOS/EOS token strings (from `tokenizer_config.json` or GGUF metadata).
    pub fn with_special_tokens(mut self, bos: Option<String>, eos: Option<String>) -> Self {
        self.bos_token = bos;
        self.eos_token = eos;
        self
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encodes `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    /// `add_special_tokens` applies the tokenizer's post-processor (e.g. a BOS prefix).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes token `id` stands for, exactly: a byte-level BPE token (SmolLM2, Llama 3)
    /// may hold part of a UTF-8 character, which decoding it alone would turn into U+FFFD.
    /// Other tokenizers: a byte-fallback token (`<0x0A>`) is its byte, anything else the
    /// UTF-8 of its text decoded alone. `None` for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.inner.id_to_token(id)?;
        if matches!(
            self.inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        ) {
            if let Some(bytes) = byte_level_bytes(&token) {
                return Some(bytes);
            }
        }
        if let Some(byte) = byte_fallback(&token) {
            return Some(vec![byte]);
        }
        self.decode(&[id], false).ok().map(String::into_bytes)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Id of the EOS token, if it has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Id of the BOS token, if it has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer(format!("cannot serialise: {e}")))?;
        crate::fsutil::write_atomic(path, json.as_bytes())
    }
}

/// The bytes behind a byte-level BPE token's text, where every byte is written as one
/// printable character (GPT-2's table: printable Latin-1 stands for itself, the other 68
/// bytes for U+0100 onwards, in order); `None` if a character is not in the table.
fn byte_level_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(byte_level_byte).collect()
}

/// The byte that `c` stands for in GPT-2's byte-level alphabet.
fn byte_level_byte(c: char) -> Option<u8> {
    let prints_as_itself = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let code = c as u32;
    if code < 0x100 {
        return prints_as_itself(code).then_some(code as u8);
    }
    // The n-th byte that does not print as itself is written as U+0100 + n.
    let n = (code - 0x100) as usize;
    (0u32..0x100)
        .filter(|&b| !prints_as_itself(b))
        .nth(n)
        .map(|b| b as u8)
}

/// `<0xHH>`, SentencePiece's token for a raw byte.
fn byte_fallback(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_round_trips_every_byte() {
        // GPT-2's table: the bytes that do not print as themselves, in order, from U+0100.
        let mut next = 0x100;
        for b in 0u32..0x100 {
            let c = if matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            };
            assert_eq!(byte_level_byte(c), Some(b as u8), "{c:?}");
        }
        assert_eq!(next, 0x100 + 68);
        assert_eq!(byte_level_byte(' '), None);
        assert_eq!(byte_level_byte(char::from_u32(0x100 + 68).unwrap()), None);
        // "Ġhello" is " hello"; "Ċ" a newline; "ĉ" a tab.
        assert_eq!(byte_level_bytes("Ġhello").unwrap(), b" hello");
        assert_eq!(byte_level_bytes("Ċĉ").unwrap(), b"\n\t");
    }

    #[test]
    fn byte_fallback_tokens() {
        assert_eq!(byte_fallback("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback("<0xFF>"), Some(0xFF));
        assert_eq!(byte_fallback("<0x0>"), None);
        assert_eq!(byte_fallback("<0xZZ>"), None);
        assert_eq!(byte_fallback("0x0A"), None);
    }
}
