//! Chat templates: the model's own Jinja `chat_template`, rendered with minijinja.
//!
//! HF models ship their prompt format as a Jinja template (in `tokenizer_config.json`, or in
//! GGUF metadata as `tokenizer.chat_template`). Rendering that template, rather than a
//! hand-written format per family, is what makes ChatML, Llama-3 and the rest come out right.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::tokenizer::Tokenizer;

/// One chat message, as the OpenAI API and HF templates both spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// End-of-turn markers of the common template families. A template that writes one of these
/// after each message also needs generation to stop on it, or the model invents new turns.
const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// ChatML, used when a model ships no template of its own (e.g. the toy world's models).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; errors if it is not valid Jinja.
    pub fn new(source: impl Into<String>, tokenizer: &Tokenizer) -> Result<Self> {
        let template = Self {
            source: source.into(),
            bos_token: tokenizer.bos_token().unwrap_or_default().to_string(),
            eos_token: tokenizer.eos_token().unwrap_or_default().to_string(),
        };
        template.environment()?;
        Ok(template)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        // Llama-3.1 templates print today's date in the system prompt.
        env.add_function("strftime_now", |format: String| -> String {
            // A fixed date keeps prompts (and so generations) reproducible.
            format
                .replace("%d", "26")
                .replace("%b", "Jul")
                .replace("%Y", "2024")
                .replace("%m", "07")
        });
        env.add_template("chat", &self.source)
            .map_err(|e| ModelError::ChatTemplate(format!("invalid template: {e}")))?;
        Ok(env)
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| ModelError::ChatTemplate(format!("cannot render: {e}")))
    }

    /// Token ids that end the assistant's turn: the EOS token plus any end-of-turn marker the
    /// template writes.
    pub fn stop_token_ids(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        let mut ids: Vec<u32> = tokenizer.eos_token_id().into_iter().collect();
        for token in END_OF_TURN_TOKENS {
            if self.source.contains(token) {
                if let Some(id) = tokenizer.token_to_id(token) {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = [
            ("<|im_start|>", 0),
            ("<|im_end|>", 1),
            ("<unk>", 2),
            ("<|eot_id|>", 3),
        ]
        .into_iter()
        .map(|(t, i)| (t.to_string(), i))
        .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        Tokenizer::new(
            tokenizers::Tokenizer::new(model),
            Some("<|im_start|>".into()),
            Some("<|im_end|>".into()),
        )
    }

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, &tokenizer()).unwrap();
        let text = t.render(&[ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.stop_token_ids(&tokenizer()), vec![1]);
    }

    #[test]
    fn llama3_template_renders() {
        let src = "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}";
        let t = ChatTemplate::new(src, &tokenizer()).unwrap();
        let text = t
            .render(
                &[ChatMessage::system("Be brief. "), ChatMessage::user("Hi")],
                true,
            )
            .unwrap();
        assert!(text.starts_with("<|im_start|><|start_header_id|>system"));
        assert!(text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        assert!(t.stop_token_ids(&tokenizer()).contains(&3));
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{% for m in messages %}{{ m['content'].strip().upper() }}{% endfor %}";
        let t = ChatTemplate::new(src, &tokenizer()).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::user("  ab ")], false).unwrap(),
            "AB"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}";
        let t = ChatTemplate::new(src, &tokenizer()).unwrap();
        let err = t.render(&[ChatMessage::assistant("x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn invalid_template_is_refused() {
        assert!(ChatTemplate::new("{% for %}", &tokenizer()).is_err());
    }
}
