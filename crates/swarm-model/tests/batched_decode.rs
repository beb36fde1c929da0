//! Batched decoding gives every sequence the logits and greedy tokens it gets alone, through
//! the moves of a continuous-batching server: prompts prefilled in left-padded groups, a
//! second group joined to a running batch ([`KvCache::concat`]), a finished row dropped
//! ([`KvCache::select_rows`]). Both are checked against a full forward pass over prompt and
//! continuation, which attends with matrix products and a mask rather than the decode
//! kernel.

use anyhow::Result;
use candle_core::{Device, Tensor};
use swarm_model::{argmax_rows, random_weights, KvCache, Llama, LlamaConfig, Precision};

/// GQA with 4 query heads per KV head and a head width that is not a multiple of 8 (the
/// kernel's SIMD tail).
fn config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 96,
        hidden_size: 48,
        intermediate_size: 80,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        head_dim: 12,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 64,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        torch_dtype: "float32".to_string(),
    }
}

fn model(config: &LlamaConfig) -> Result<Llama> {
    let weights = random_weights(config, 21, &Device::Cpu)?;
    Ok(Llama::load(&weights, config, &Device::Cpu, Precision::F32)?)
}

fn prompts(n: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|s| {
            let len = 1 + (s * 5) % 13;
            (0..len)
                .map(|i| ((s * 31 + i * 17 + 3) % vocab) as u32)
                .collect()
        })
        .collect()
}

fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.to_vec2::<f32>()?)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One sequence decoded alone: its greedy tokens and the logits that chose each.
struct Alone {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn decode_alone(model: &Llama, prompt: &[u32], steps: usize) -> Result<Alone> {
    let mut cache = model.new_cache(1, 0);
    let mut logits = vec![rows(&model.prefill(&[prompt.to_vec()], &mut cache)?)?.remove(0)];
    let mut tokens = Vec::new();
    for _ in 0..steps {
        let last = logits.last().map(|l| argmax(l)).unwrap_or(0);
        tokens.push(last);
        logits.push(rows(&model.decode(&[last], &mut cache)?)?.remove(0));
    }
    Ok(Alone { tokens, logits })
}

fn argmax(row: &[f32]) -> u32 {
    swarm_model::argmax(row)
}

#[test]
fn continuous_batching_matches_each_sequence_alone_and_the_full_forward() -> Result<()> {
    let config = config();
    let model = model(&config)?;
    let prompts = prompts(10, config.vocab_size);
    let steps = 8;
    let alone: Vec<Alone> = prompts
        .iter()
        .map(|p| decode_alone(&model, p, steps))
        .collect::<Result<_>>()?;

    // Decoding alone agrees with one full forward pass over prompt + continuation.
    for (s, (p, a)) in prompts.iter().zip(&alone).enumerate() {
        let mut ids = p.clone();
        ids.extend(&a.tokens);
        let n = ids.len();
        let full = model
            .forward(
                &Tensor::from_vec(ids, (1, n), &Device::Cpu)?,
                &mut model.new_cache(1, 0),
            )?
            .squeeze(0)?;
        for (k, logits) in a.logits.iter().enumerate() {
            let reference = full.get(p.len() - 1 + k)?.to_vec1::<f32>()?;
            let diff = max_diff(logits, &reference);
            assert!(
                diff < 1e-4,
                "sequence {s} step {k}: decode vs full forward {diff}"
            );
        }
    }

    // The batch: sequences 0..6 prefilled together and decoded 3 steps, then 6..10 prefilled
    // and joined, then sequence 1 dropped after 2 more steps.
    let mut seqs: Vec<usize> = (0..6).collect();
    let mut cache = model.new_cache(seqs.len(), 0);
    let mut step_of = vec![0usize; prompts.len()];
    let check = |seqs: &[usize], logits: &Tensor, step_of: &mut [usize]| -> Result<Vec<u32>> {
        let mut next = Vec::new();
        for (row, (&s, batched)) in seqs.iter().zip(rows(logits)?).enumerate() {
            let k = step_of[s];
            let diff = max_diff(&batched, &alone[s].logits[k]);
            assert!(
                diff < 1e-4,
                "sequence {s} (row {row}) step {k}: batched vs alone {diff}"
            );
            assert_eq!(
                argmax(&batched),
                argmax(&alone[s].logits[k]),
                "sequence {s} step {k}"
            );
            step_of[s] += 1;
            next.push(argmax(&batched));
        }
        Ok(next)
    };
    let first: Vec<Vec<u32>> = seqs.iter().map(|&s| prompts[s].clone()).collect();
    let logits = model.prefill(&first, &mut cache)?;
    let mut next = check(&seqs, &logits, &mut step_of)?;
    for _ in 0..3 {
        let logits = model.decode(&next, &mut cache)?;
        next = check(&seqs, &logits, &mut step_of)?;
    }
    let joining: Vec<usize> = (6..10).collect();
    let mut joined_cache = model.new_cache(joining.len(), 0);
    let joined_prompts: Vec<Vec<u32>> = joining.iter().map(|&s| prompts[s].clone()).collect();
    let logits = model.prefill(&joined_prompts, &mut joined_cache)?;
    next.extend(check(&joining, &logits, &mut step_of)?);
    cache = KvCache::concat(&[cache, joined_cache])?;
    seqs.extend(&joining);
    assert!(cache.padding().iter().any(|&p| p > 0), "the join pads rows");
    for _ in 0..2 {
        let logits = model.decode(&next, &mut cache)?;
        next = check(&seqs, &logits, &mut step_of)?;
    }
    let keep: Vec<usize> = (0..seqs.len()).filter(|&r| r != 1).collect();
    cache.select_rows(&keep)?;
    seqs = keep.iter().map(|&r| seqs[r]).collect();
    next = keep.iter().map(|&r| next[r]).collect();
    for _ in 0..2 {
        let logits = model.decode(&next, &mut cache)?;
        next = check(&seqs, &logits, &mut step_of)?;
    }
    assert_eq!(step_of[0], 8);
    assert_eq!(step_of[6], 5);
    Ok(())
}

#[test]
fn a_batch_of_33_gives_each_row_its_own_greedy_tokens() -> Result<()> {
    // More rows than threads and more than the small-batch paths of the products.
    let mut config = config();
    config.num_attention_heads = 6;
    config.num_key_value_heads = 2;
    config.head_dim = 8;
    let model = model(&config)?;
    let prompts = prompts(33, config.vocab_size);
    let steps = 5;
    let mut cache = model.new_cache(prompts.len(), 0);
    let mut next = argmax_rows(&model.prefill(&prompts, &mut cache)?)?;
    let mut batched = vec![next.clone()];
    for _ in 0..steps {
        next = argmax_rows(&model.decode(&next, &mut cache)?)?;
        batched.push(next.clone());
    }
    for (s, p) in prompts.iter().enumerate() {
        let alone = decode_alone(&model, p, steps)?;
        let firsts: Vec<u32> = alone.logits.iter().map(|l| argmax(l)).collect();
        let mine: Vec<u32> = batched.iter().map(|step| step[s]).collect();
        assert_eq!(mine, firsts, "sequence {s}");
    }
    Ok(())
}

/// Prefix caching: a row's first tokens copied out of a padded batch ([`KvCache::copy_row`])
/// and continued with the rest of a longer prompt give the logits of that prompt prefilled
/// from scratch, and decoding goes on to the same greedy tokens; the batch itself is not
/// disturbed.
#[test]
fn a_copied_prefix_continues_like_the_whole_prompt() -> Result<()> {
    let config = config();
    let model = model(&config)?;
    // Row 1 is the shorter prompt, so it sits behind left padding in the batch.
    let prompts = prompts(3, config.vocab_size);
    let (short, long) = (&prompts[1], &prompts[2]);
    assert!(short.len() < long.len());
    let mut batch = model.new_cache(3, 0);
    model.prefill(&prompts, &mut batch)?;
    // A new prompt that shares the short one's tokens and goes on past them, in two lengths
    // of continuation: one token (the decode kernel) and several (matrix products and a mask).
    for extra in [1usize, 9] {
        let mut prompt = short.clone();
        prompt.extend((0..extra).map(|i| ((i * 7 + 5) % config.vocab_size) as u32));
        let alone = decode_alone(&model, &prompt, 6)?;

        let mut cache = batch.copy_row(1, short.len(), prompt.len() + 6)?;
        let suffix = Tensor::new(&prompt[short.len()..], &Device::Cpu)?.unsqueeze(0)?;
        let mut logits = vec![rows(&model.forward_last(&suffix, &mut cache)?)?.remove(0)];
        let mut tokens = Vec::new();
        for _ in 0..6 {
            let last = logits.last().map(|l| argmax(l)).unwrap_or(0);
            tokens.push(last);
            logits.push(rows(&model.decode(&[last], &mut cache)?)?.remove(0));
        }
        assert_eq!(tokens, alone.tokens, "{extra} tokens after the prefix");
        for (got, want) in logits.iter().zip(&alone.logits) {
            assert!(
                max_diff(got, want) < 1e-4,
                "{extra}: {}",
                max_diff(got, want)
            );
        }
    }
    // The batch still decodes as before: its rows were only read.
    assert_eq!(
        batch.seq_lens(),
        prompts.iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok(())
}
