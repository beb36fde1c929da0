//! Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.
//!
//! A [`Sampler`] belongs to one sequence and owns its random generator (ChaCha8, seeded from
//! the request's seed), so a sequence samples the same tokens whether it runs alone or in a
//! batch, and the same seed gives the same output.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{ModelError, Result};

/// Temperatures at or below this are greedy decoding.
const GREEDY_TEMPERATURE: f64 = 1e-5;

/// How to pick tokens: `temperature <= 1e-5` is greedy; `top_k = 0` and `top_p = 1` turn
/// those filters off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub seed: u64,
}

impl SamplingParams {
    /// Checks ranges: temperature finite and >= 0, top-p in (0, 1].
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ModelError::Generation(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Generation(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= GREEDY_TEMPERATURE || self.top_k == 1
    }
}

/// The sampler of one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch space reused across steps: (token, probability).
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            candidates: Vec::new(),
        })
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Generation("empty logits".to_string()));
        }
        if self.params.is_greedy() {
            return Ok(argmax(logits));
        }
        let total = self.filtered(logits)?;
        Ok(self.draw(total))
    }

    /// Picks the next token among those `allowed` accepts (JSON mode: the tokens that keep
    /// the text a JSON prefix); `None` if it accepts none.
    ///
    /// Greedy: the most likely allowed token. Sampling: a draw from the tokens that the
    /// temperature, top-k and top-p leave, renormalised over the allowed ones, by rejection
    /// (a refused draw leaves the candidates and the next draw is from the rest), so that
    /// `allowed` runs on the few tokens drawn, not on the vocabulary. If none of those
    /// candidates is allowed, the draw is from every allowed token at the temperature.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        mut allowed: impl FnMut(u32) -> bool,
    ) -> Result<Option<u32>> {
        if logits.is_empty() {
            return Err(ModelError::Generation("empty logits".to_string()));
        }
        if self.params.is_greedy() {
            let best = argmax(logits);
            if allowed(best) {
                return Ok(Some(best));
            }
            // The next most likely tokens, a growing head at a time (as the nucleus search
            // does): JSON mode refuses the best token often, and sorting the whole vocabulary
            // each time would cost more than the few checks it takes.
            let mut order: Vec<u32> = (0..logits.len() as u32)
                .filter(|&id| !logits[id as usize].is_nan())
                .collect();
            let desc = |a: &u32, b: &u32| {
                logits[*b as usize]
                    .total_cmp(&logits[*a as usize])
                    .then(a.cmp(b))
            };
            let (mut done, mut head) = (0, NUCLEUS_FIRST_HEAD.min(order.len()));
            while done < order.len() {
                if head < order.len() {
                    order[done..].select_nth_unstable_by(head - done - 1, desc);
                }
                order[done..head].sort_unstable_by(desc);
                if let Some(&id) = order[done..head].iter().find(|&&id| allowed(id)) {
                    return Ok(Some(id));
                }
                done = head;
                head = (head * 4).min(order.len());
            }
            return Ok(None);
        }
        let mut total = self.filtered(logits)?;
        while !self.candidates.is_empty() {
            let at = self.draw_index(total);
            let (id, p) = self.candidates[at];
            if allowed(id) {
                return Ok(Some(id));
            }
            self.candidates.swap_remove(at);
            total -= p;
        }
        // Every candidate refused: all the allowed tokens, at the temperature alone.
        let inv_t = 1.0 / self.params.temperature as f32;
        let c = &mut self.candidates;
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(i, l)| !l.is_nan() && allowed(i as u32))
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if c.is_empty() {
            return Ok(None);
        }
        let total = softmax_in_place(c);
        Ok(Some(self.draw(total)))
    }

    /// Fills `candidates` with the tokens temperature, top-k and top-p leave and their
    /// probabilities (normalised before the top-p cut); returns their total.
    fn filtered(&mut self, logits: &[f32]) -> Result<f32> {
        let inv_t = 1.0 / self.params.temperature as f32;
        let c = &mut self.candidates;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        // NaN logits (a broken model) must not poison the sort.
        c.retain(|(_, l)| !l.is_nan());
        if c.is_empty() {
            return Err(ModelError::Generation("all logits are NaN".to_string()));
        }
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.params.top_k;
        if k > 0 && k < c.len() {
            c.select_nth_unstable_by(k - 1, desc);
            c.truncate(k);
        }
        softmax_in_place(c);
        // Nucleus: the smallest set of most likely tokens whose mass reaches top_p (at least
        // one token). Only that head needs sorting, and it is usually small: sort a growing
        // head until it holds the mass, instead of sorting the whole vocabulary (49k tokens
        // for SmolLM2) for every token of every sequence.
        let mut total = 1.0;
        if self.params.top_p < 1.0 {
            let top_p = self.params.top_p as f32;
            let mut head = NUCLEUS_FIRST_HEAD.min(c.len());
            let keep = loop {
                if head < c.len() {
                    c.select_nth_unstable_by(head - 1, desc);
                }
                c[..head].sort_unstable_by(desc);
                let mut mass = 0f32;
                let reached = c[..head].iter().position(|&(_, p)| {
                    mass += p;
                    mass >= top_p
                });
                match reached {
                    Some(i) => break i + 1,
                    None if head == c.len() => break head,
                    None => head = (head * 4).min(c.len()),
                }
            };
            c.truncate(keep);
            total = c.iter().map(|(_, p)| p).sum();
        }
        Ok(total)
    }

    /// A token drawn from `candidates`, whose probabilities sum to `total`.
    fn draw(&mut self, total: f32) -> u32 {
        let at = self.draw_index(total);
        self.candidates[at].0
    }

    /// The index in `candidates` of a draw; `candidates` is not empty.
    fn draw_index(&mut self, total: f32) -> usize {
        let mut u = self.rng.gen::<f32>() * total;
        for (i, &(_, p)) in self.candidates.iter().enumerate() {
            if u < p {
                return i;
            }
            u -= p;
        }
        self.candidates.len() - 1
    }
}

/// Turns the (token, logit) pairs into (token, probability) in place; returns the total (1
/// up to rounding).
fn softmax_in_place(c: &mut [(u32, f32)]) -> f32 {
    let max = c.iter().map(|&(_, l)| l).fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for (_, l) in c.iter_mut() {
        *l = (*l - max).exp();
        total += *l;
    }
    for (_, p) in c.iter_mut() {
        *p /= total;
    }
    c.iter().map(|&(_, p)| p).sum()
}

/// How many of the most likely tokens the nucleus search sorts first (then 4x more each time).
const NUCLEUS_FIRST_HEAD: usize = 64;

/// Index of the largest logit (the first one on ties), ignoring NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_value {
            best = i;
            best_value = l;
        }
    }
    best as u32
}

/// Changes to a row of logits before sampling, as OpenAI's API defines them: a fixed bias
/// per token (`logit_bias`), and penalties on the tokens generated so far
/// (`frequency_penalty` once per time a token was generated, `presence_penalty` once if it
/// was at all).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitAdjustments {
    pub bias: Vec<(u32, f32)>,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
}

impl LogitAdjustments {
    /// Whether applying changes nothing.
    pub fn is_identity(&self) -> bool {
        self.bias.iter().all(|&(_, b)| b == 0.0)
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
    }

    /// Adjusts `logits` for the next token after `generated`. Token ids outside `logits` are
    /// skipped (validation refuses them before).
    pub fn apply(&self, logits: &mut [f32], generated: &[u32]) {
        for &(id, bias) in &self.bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if self.frequency_penalty == 0.0 && self.presence_penalty == 0.0 {
            return;
        }
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in generated {
            *counts.entry(t).or_default() += 1;
        }
        for (id, count) in counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= self.frequency_penalty * count as f32 + self.presence_penalty;
            }
        }
    }
}

/// The log-probability of one chosen token and of the most likely tokens at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub token: u32,
    /// `ln p(token)`; `-inf` for a token the logits rule out.
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, most likely first (the lower id
    /// first on ties).
    pub top: Vec<(u32, f32)>,
}

/// `ln p(token)` under the model's own distribution at this step (the softmax of `logits`
/// at temperature 1, before any top-k or top-p cut: what the model thinks of the token,
/// whatever the request's sampling did), and the `top` most likely tokens with theirs.
///
/// The normaliser is summed in f64, so that a vocabulary of many small probabilities loses
/// nothing to rounding.
pub fn token_logprobs(logits: &[f32], token: u32, top: usize) -> Result<TokenLogprobs> {
    let chosen = *logits.get(token as usize).ok_or_else(|| {
        ModelError::Generation(format!(
            "token {token} is outside the {} logits",
            logits.len()
        ))
    })?;
    if logits.iter().any(|l| l.is_nan()) {
        return Err(ModelError::Generation("the logits hold NaN".to_string()));
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return Err(ModelError::Generation(
            "every logit is -inf: no token is possible".to_string(),
        ));
    }
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_normaliser = f64::from(max) + sum.ln();
    let logprob = |l: f32| (f64::from(l) - log_normaliser) as f32;
    // The head kept sorted as the logits stream by: `top` is small (at most 20 in the API).
    let mut head: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if head.len() == top && head[top - 1].1 >= l {
                continue;
            }
            let at = head.partition_point(|&(_, h)| h >= l);
            head.insert(at, (id as u32, l));
            head.truncate(top);
        }
    }
    Ok(TokenLogprobs {
        token,
        logprob: logprob(chosen),
        top: head.into_iter().map(|(id, l)| (id, logprob(l))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f64, top_k: usize, top_p: f64, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 101) as f32 / 25.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let l = logits();
        let best = argmax(&l);
        assert_eq!(l[best as usize], l.iter().cloned().fold(f32::MIN, f32::max));
        let mut s = Sampler::new(params(0.0, 0, 1.0, 1)).unwrap();
        assert_eq!(s.sample(&l).unwrap(), best);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let l = logits();
        let mut s = Sampler::new(params(5.0, 1, 1.0, 3)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&l).unwrap(), argmax(&l));
        }
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let l = logits();
        let mut s = Sampler::new(params(1.0, 0, 1e-6, 3)).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&l).unwrap(), argmax(&l));
        }
    }

    #[test]
    fn top_k_restricts_to_the_k_best() {
        let l = logits();
        let mut sorted: Vec<u32> = (0..l.len() as u32).collect();
        sorted.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
        let best3 = &sorted[..3];
        let mut s = Sampler::new(params(100.0, 3, 1.0, 9)).unwrap();
        for _ in 0..100 {
            assert!(best3.contains(&s.sample(&l).unwrap()));
        }
    }

    #[test]
    fn same_seed_same_tokens_different_seeds_differ() {
        let l = logits();
        let run = |seed| {
            let mut s = Sampler::new(params(2.0, 0, 0.95, seed)).unwrap();
            (0..50).map(|_| s.sample(&l).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    /// Frequencies of `draws` samples of `logits`.
    fn frequencies(params: SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = Sampler::new(params).unwrap();
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(logits).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    /// Softmax of `logits / t` restricted to `allowed`, renormalised.
    fn expected(logits: &[f32], t: f64, allowed: &[bool]) -> Vec<f64> {
        let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let w: Vec<f64> = logits
            .iter()
            .zip(allowed)
            .map(|(&l, &a)| if a { ((l as f64 - max) / t).exp() } else { 0.0 })
            .collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    #[test]
    fn samples_follow_the_softmax() {
        // 300 tokens, 40,000 seeded draws: every frequency within 0.01 of its probability.
        let l: Vec<f32> = (0..300).map(|i| ((i * 53) % 97) as f32 / 12.0).collect();
        let got = frequencies(params(1.5, 0, 1.0, 5), &l, 40_000);
        let want = expected(&l, 1.5, &vec![true; l.len()]);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 0.01, "token {i}: {g} vs {w}");
        }
    }

    #[test]
    fn top_p_keeps_exactly_the_nucleus_even_when_it_is_large() {
        // A flat distribution: the nucleus of 0.9 holds ~270 of 300 tokens, more than the
        // first sorted head, so the search has to grow it.
        let l: Vec<f32> = (0..300).map(|i| (i % 7) as f32 / 50.0).collect();
        let top_p = 0.9;
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        let probs = expected(&l, 1.0, &vec![true; l.len()]);
        let mut allowed = vec![false; l.len()];
        let mut mass = 0.0;
        for &i in &order {
            allowed[i] = true;
            mass += probs[i];
            if mass >= top_p {
                break;
            }
        }
        let kept = allowed.iter().filter(|&&a| a).count();
        assert!(kept > NUCLEUS_FIRST_HEAD * 4, "nucleus of {kept}");
        let got = frequencies(params(1.0, 0, top_p, 8), &l, 40_000);
        let want = expected(&l, 1.0, &allowed);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 0.01, "token {i}: {g} vs {w}");
            if !allowed[i] {
                assert_eq!(*g, 0.0, "token {i} is outside the nucleus");
            }
        }
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(Sampler::new(params(-1.0, 0, 1.0, 0)).is_err());
        assert!(Sampler::new(params(f64::NAN, 0, 1.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 0.0, 0)).is_err());
        assert!(Sampler::new(params(1.0, 0, 1.5, 0)).is_err());
        let mut s = Sampler::new(params(1.0, 0, 1.0, 0)).unwrap();
        assert!(s.sample(&[]).is_err());
    }

    #[test]
    fn logprobs_are_a_distribution_and_top_is_sorted() {
        let mut l = logits();
        l[7] = f32::NEG_INFINITY;
        let total: f64 = (0..l.len() as u32)
            .map(|t| f64::from(token_logprobs(&l, t, 0).unwrap().logprob).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
        let ruled_out = token_logprobs(&l, 7, 0).unwrap();
        assert_eq!(ruled_out.logprob, f32::NEG_INFINITY);
        assert!(ruled_out.top.is_empty());

        let got = token_logprobs(&l, 3, 5).unwrap();
        let mut order: Vec<u32> = (0..l.len() as u32).collect();
        order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
        let ids: Vec<u32> = got.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, order[..5]);
        assert_eq!(ids[0], argmax(&l));
        for &(id, lp) in &got.top {
            assert_eq!(lp, token_logprobs(&l, id, 0).unwrap().logprob);
        }
        // More alternatives than tokens: all of them.
        assert_eq!(token_logprobs(&[0.5, 2.0], 0, 20).unwrap().top.len(), 2);
    }

    #[test]
    fn logprob_ties_list_the_lower_id_first() {
        let got = token_logprobs(&[1.0, 3.0, 3.0, 0.0, 3.0], 0, 3).unwrap();
        let ids: Vec<u32> = got.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [1, 2, 4]);
        let e = std::f64::consts::E;
        let want = (e.powi(3) / (3.0 * e.powi(3) + e + 1.0)).ln() as f32;
        assert!((got.top[0].1 - want).abs() < 1e-6, "{:?}", got.top);
    }

    #[test]
    fn logprobs_of_bad_logits_are_errors() {
        assert!(token_logprobs(&[0.0, 1.0], 2, 1).is_err());
        assert!(token_logprobs(&[0.0, f32::NAN], 0, 1).is_err());
        assert!(token_logprobs(&[f32::NEG_INFINITY; 3], 0, 1).is_err());
        assert!(token_logprobs(&[], 0, 0).is_err());
    }

    /// Frequencies of `draws` samples of `sample_allowed` per token.
    fn allowed_frequencies(s: &mut Sampler, l: &[f32], allowed: &[u32], draws: usize) -> Vec<f64> {
        let mut counts = vec![0usize; l.len()];
        for _ in 0..draws {
            let t = s
                .sample_allowed(l, |id| allowed.contains(&id))
                .unwrap()
                .unwrap();
            counts[t as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    /// The softmax of `l / t` over `allowed` only.
    fn masked_softmax(l: &[f32], t: f64, allowed: &[u32]) -> Vec<f64> {
        let w: Vec<f64> = (0..l.len())
            .map(|i| {
                if allowed.contains(&(i as u32)) {
                    (f64::from(l[i]) / t).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    #[test]
    fn allowed_sampling_is_the_masked_distribution() {
        let l = [2.0, 1.5, 0.5, 1.0, 0.0, 1.8];
        let allowed = [1, 3, 4];
        let mut s = Sampler::new(params(1.0, 0, 1.0, 9)).unwrap();
        let got = allowed_frequencies(&mut s, &l, &allowed, 40_000);
        let want = masked_softmax(&l, 1.0, &allowed);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.01, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn allowed_sampling_falls_back_past_the_nucleus() {
        // top_p keeps token 0 alone, which is not allowed: every allowed token, at the
        // temperature.
        let l = [5.0, 1.0, 0.5, 0.0];
        let allowed = [1, 2, 3];
        let mut s = Sampler::new(params(0.7, 0, 0.5, 4)).unwrap();
        let got = allowed_frequencies(&mut s, &l, &allowed, 40_000);
        let want = masked_softmax(&l, 0.7, &allowed);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 0.01, "{got:?} vs {want:?}");
        }
        assert_eq!(s.sample_allowed(&l, |_| false).unwrap(), None);
    }

    #[test]
    fn allowed_greedy_is_the_best_allowed() {
        let l = logits();
        let mut s = Sampler::new(params(0.0, 0, 1.0, 1)).unwrap();
        let best = argmax(&l);
        assert_eq!(s.sample_allowed(&l, |_| true).unwrap(), Some(best));
        let odd = s.sample_allowed(&l, |id| id % 2 == 1).unwrap().unwrap();
        let want = (0..l.len() as u32)
            .filter(|id| id % 2 == 1)
            .max_by(|&a, &b| l[a as usize].total_cmp(&l[b as usize]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(odd, want);
        assert_eq!(s.sample_allowed(&l, |_| false).unwrap(), None);
        // Past the first head of candidates: the best of a vocabulary of 1,000 whose allowed
        // tokens are among its least likely, ties to the lower id.
        let wide: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 997) as f32 / 10.0)
            .collect();
        let mut order: Vec<u32> = (0..1000).collect();
        order.sort_by(|&a, &b| {
            wide[b as usize]
                .total_cmp(&wide[a as usize])
                .then(a.cmp(&b))
        });
        for rank in [63, 64, 300, 999] {
            let only = order[rank..].to_vec();
            let got = s.sample_allowed(&wide, |id| only.contains(&id)).unwrap();
            assert_eq!(got, Some(order[rank]), "allowed from rank {rank}");
        }
    }

    #[test]
    fn allowed_sampling_with_everything_allowed_is_plain_sampling() {
        let l = logits();
        let (mut a, mut b) = (
            Sampler::new(params(0.9, 20, 0.9, 5)).unwrap(),
            Sampler::new(params(0.9, 20, 0.9, 5)).unwrap(),
        );
        for _ in 0..200 {
            assert_eq!(
                a.sample(&l).unwrap(),
                b.sample_allowed(&l, |_| true).unwrap().unwrap()
            );
        }
    }

    #[test]
    fn adjustments_bias_and_penalise_as_openai_defines() {
        let adjust = LogitAdjustments {
            bias: vec![(1, 5.0), (3, -100.0), (99, 1.0)],
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
        };
        let mut l = vec![0.0f32; 4];
        adjust.apply(&mut l, &[2, 2, 2, 1]);
        // token 1: +5 bias, generated once: -0.5 - 0.25; token 2: three times: -1.5 - 0.25.
        assert_eq!(l, [0.0, 4.25, -1.75, -100.0]);
        assert!(!adjust.is_identity());
        assert!(LogitAdjustments::default().is_identity());
        let mut l = vec![1.0f32; 3];
        LogitAdjustments::default().apply(&mut l, &[0, 1]);
        assert_eq!(l, [1.0; 3]);
    }
}
