//! The toy world's tokenizer: byte-level BPE trained on the corpus with the `tokenizers`
//! crate (GPT-2 pre-tokenisation, no prefix space), with ChatML's special tokens.

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::error::{Result, TrainError};

/// Padding and document separator (id 0).
pub const PAD_TOKEN: &str = "<|endoftext|>";
/// Start of a ChatML turn (id 1).
pub const IM_START: &str = "<|im_start|>";
/// End of a ChatML turn, the EOS token (id 2).
pub const IM_END: &str = "<|im_end|>";

/// Trains a byte-level BPE tokenizer of `vocab_size` tokens (special tokens included) on
/// `texts`. Ids 0, 1, 2 are `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`; BOS is
/// `<|im_start|>` and EOS `<|im_end|>`, as in SmolLM2. With `split_digits`, every digit is
/// pre-tokenised on its own (before the byte-level split), so no token holds two digits.
pub fn train_tokenizer<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
    split_digits: bool,
) -> Result<swarm_model::Tokenizer> {
    let alphabet = ByteLevel::alphabet();
    let min = alphabet.len() + 3;
    if vocab_size < min {
        return Err(TrainError::config(
            "vocab_size",
            format!("{vocab_size} is below the {min} byte-level tokens and special tokens"),
        ));
    }
    let specials: Vec<AddedToken> = [PAD_TOKEN, IM_START, IM_END]
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(alphabet.into_iter().collect())
        .build()
        .into();
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    let byte_level = ByteLevel::new(false, true, true);
    if split_digits {
        tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ]))));
    } else {
        tokenizer.with_pre_tokenizer(Some(byte_level));
    }
    tokenizer.with_decoder(Some(byte_level));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| TrainError::Tokenizer(format!("training failed: {e}")))?;
    for (i, t) in [PAD_TOKEN, IM_START, IM_END].iter().enumerate() {
        if tokenizer.token_to_id(t) != Some(i as u32) {
            return Err(TrainError::Tokenizer(format!(
                "special token {t} did not get id {i}"
            )));
        }
    }
    Ok(swarm_model::Tokenizer::new(
        tokenizer,
        Some(IM_START.to_string()),
        Some(IM_END.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_chatml_and_code() {
        let corpus = [
            "def f(x):\n    return x * 3 + 7",
            "SELECT name FROM employees WHERE salary > 100",
            "The small cat sees the river slowly.",
            "wc -l < apple.txt",
        ];
        let texts: Vec<&str> = corpus.iter().cycle().take(200).copied().collect();
        let tok = train_tokenizer(texts.into_iter(), 300, false).unwrap();
        assert!(tok.vocab_size() <= 300);
        let text = "<|im_start|>user\nWrite `g(n)` — ünïcode ok?<|im_end|>\n<|im_start|>assistant\n```python\ndef g(n):\n    return n\n```<|im_end|>";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids[0], 1);
        assert!(ids.contains(&2));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        assert_eq!(tok.eos_token_id(), Some(2));
    }

    #[test]
    fn too_small_a_vocab_is_refused() {
        assert!(train_tokenizer(["a"].into_iter(), 100, false).is_err());
    }

    #[test]
    fn split_digits_gives_one_token_per_digit() {
        let corpus = ["x = 1234 + 1234", "return n * 17 - 1234", "1234 rows"];
        let texts: Vec<&str> = corpus.iter().cycle().take(300).copied().collect();
        let merged = train_tokenizer(texts.iter().copied(), 300, false).unwrap();
        let split = train_tokenizer(texts.iter().copied(), 300, true).unwrap();
        let text = "return n * 1234 + 17";
        let digit_tokens = |tok: &swarm_model::Tokenizer| {
            tok.encode(text, false)
                .unwrap()
                .iter()
                .map(|&id| tok.decode(&[id], false).unwrap())
                .filter(|t| t.chars().any(|c| c.is_ascii_digit()))
                .collect::<Vec<_>>()
        };
        // A frequent number is one token without the split, one per digit with it.
        assert!(digit_tokens(&merged).len() < 6);
        let split_tokens = digit_tokens(&split);
        assert_eq!(split_tokens.len(), 6, "{split_tokens:?}");
        assert!(split_tokens
            .iter()
            .all(|t| t.chars().filter(|c| c.is_ascii_digit()).count() == 1));
        let ids = split.encode(text, false).unwrap();
        assert_eq!(split.decode(&ids, false).unwrap(), text);
    }
}
