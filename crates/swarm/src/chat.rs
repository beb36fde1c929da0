//! `swarm chat` and `swarm generate`: talk to one model from the terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use swarm_model::{ChatMessage, GenerationParams, Session, StreamControl, TokenEvent};

use crate::model_args::{LoadedModel, ModelArgs};

/// Sampling flags shared by `chat` and `generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Most new tokens per answer (at least 1).
    #[arg(long, default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_tokens: usize,
    /// 0 is greedy (deterministic) decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sample among the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    fn params(&self, loaded: &LoadedModel) -> GenerationParams {
        GenerationParams {
            max_new_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            stop_strings: self.stop.clone(),
            stop_token_ids: loaded.template.stop_token_ids(&loaded.tokenizer),
            ignore_eos: false,
        }
    }
}

/// Chat with a model: one user turn per line of standard input.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system prompt (default: the model's own template decides).
    #[arg(long)]
    pub system: Option<String>,
}

/// Generate one answer to a prompt and print it.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt, as a user message (see `--raw`).
    #[arg(long, short = 'p', conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a UTF-8 text file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt to the model as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
}

/// Streams one answer to `out`, returning its text. `session` holds the conversation's keys
/// and values: only what the prompt adds to what it ran is prefilled.
fn answer(
    loaded: &LoadedModel,
    session: &mut Session,
    prompt_ids: &[u32],
    params: &GenerationParams,
    out: &mut impl Write,
) -> Result<String> {
    let mut write_error = None;
    let generated = session.generate(
        &loaded.model,
        &loaded.tokenizer,
        prompt_ids,
        params,
        |event: &TokenEvent| {
            if let Err(e) = out
                .write_all(event.text.as_bytes())
                .and_then(|_| out.flush())
            {
                write_error = Some(e);
                return StreamControl::Stop;
            }
            StreamControl::Continue
        },
    )?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write the answer");
    }
    writeln!(out)?;
    tracing::debug!(
        prompt_tokens = generated.prompt_tokens,
        reused = generated.cached_prompt_tokens,
        "answered"
    );
    Ok(generated.text)
}

fn conversation_ids(loaded: &LoadedModel, messages: &[ChatMessage]) -> Result<Vec<u32>> {
    let text = loaded.template.render(messages, true)?;
    Ok(loaded.tokenizer.encode(&text, false)?)
}

/// `swarm generate`.
pub fn run_generate(args: &GenerateArgs) -> Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => read_prompt_file(path)?,
        (None, None) => bail!("give a prompt with --prompt TEXT or --prompt-file PATH"),
    };
    let loaded = args.model.load()?;
    let ids = if args.raw {
        loaded.tokenizer.encode(&prompt, true)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(prompt));
        conversation_ids(&loaded, &messages)?
    };
    let params = args.sampling.params(&loaded);
    answer(
        &loaded,
        &mut Session::new(),
        &ids,
        &params,
        &mut std::io::stdout().lock(),
    )?;
    Ok(())
}

/// Reads a prompt file, which must be UTF-8 text.
fn read_prompt_file(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read prompt file {}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "prompt file {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// `swarm chat`.
pub fn run_chat(args: &ChatArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let params = args.sampling.params(&loaded);
    let interactive = std::io::stdin().is_terminal();
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::system(system.clone()));
    }
    if interactive {
        eprintln!(
            "Chatting with {} — one message per line; /reset forgets the conversation, \
             /exit or Ctrl-D quits.",
            loaded.name
        );
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    // Each turn prefills only what it adds to the conversation.
    let mut session = Session::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m: &ChatMessage| m.role == "system");
                session.reset();
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(line));
        let Some(ids) = fit_conversation(&loaded, &mut messages, params.max_new_tokens)? else {
            messages.pop();
            eprintln!(
                "(that message alone does not fit in the model's {} positions; not sent)",
                loaded.model.config().max_position_embeddings
            );
            continue;
        };
        let reply = answer(&loaded, &mut session, &ids, &params, &mut stdout)?;
        messages.push(ChatMessage::assistant(reply));
    }
    Ok(())
}

/// The conversation's token ids, once it fits in the model's context with room for the
/// answer (`max_tokens`, or half the context if that is less): the oldest turns after the
/// system prompt are forgotten until it does (and the user is told). `None` when even the
/// last message alone, after the system prompt, does not fit.
fn fit_conversation(
    loaded: &LoadedModel,
    messages: &mut Vec<ChatMessage>,
    max_tokens: usize,
) -> Result<Option<Vec<u32>>> {
    let limit = loaded.model.config().max_position_embeddings;
    let room = max_tokens.clamp(1, (limit / 2).max(1));
    let system = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    let mut forgotten = 0;
    loop {
        let ids = conversation_ids(loaded, messages)?;
        if ids.len() + room <= limit {
            if forgotten > 0 {
                eprintln!(
                    "(the conversation outgrew the model's {limit} positions: forgot its \
                     {forgotten} oldest messages)"
                );
            }
            return Ok(Some(ids));
        }
        // Keep the system prompt and the new message; forget the oldest exchange between
        // (a user message and the answers to it), so that the rest still opens with the user.
        if messages.len() <= system + 1 {
            return Ok(None);
        }
        messages.remove(system);
        forgotten += 1;
        while messages.len() > system + 1 && messages[system].role != "user" {
            messages.remove(system);
            forgotten += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_prompt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.txt");
        std::fs::write(&path, b"caf\xe9 au lait").unwrap();
        let err = read_prompt_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("prompt.txt") && err.contains("not UTF-8"),
            "{err}"
        );
        assert!(err.contains("offset 3"), "{err}");
    }

    #[test]
    fn missing_prompt_file_is_an_error_naming_the_file() {
        let err = read_prompt_file(std::path::Path::new("/no/such/prompt.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/such/prompt.txt"), "{err}");
    }

    #[test]
    fn utf8_prompt_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.txt");
        std::fs::write(&path, "SELECT * FROM t; -- ünïcode").unwrap();
        assert_eq!(
            read_prompt_file(&path).unwrap(),
            "SELECT * FROM t; -- ünïcode"
        );
    }
}
