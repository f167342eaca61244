//! Picks the next token from the model's logits and reports its log-probability.
//! Reported log-probabilities are the model's own (before temperature and penalties),
//! since they feed the confidence figures that decide escalation; under a grammar they
//! are over the tokens it allows, so a token it forces is certain.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::chat::{Sampling, SamplingDefaults};

/// Below this temperature sampling is greedy: dividing by ~0 only adds noise.
const GREEDY_BELOW: f32 = 1e-4;

pub struct Sampler {
    temperature: f32,
    top_p: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    top_logprobs: usize,
    rng: StdRng,
    counts: HashMap<u32, u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    /// The best alternatives, most likely first (empty unless asked for).
    pub top: Vec<(u32, f32)>,
}

impl Sampler {
    /// Draws as `sampling` asks, with `defaults` where it does not say.
    pub fn new(sampling: &Sampling, defaults: SamplingDefaults, top_logprobs: usize) -> Self {
        let drawn = defaults.applied_to(sampling);
        let rng = match sampling.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            temperature: drawn.temperature,
            top_p: drawn.top_p,
            presence_penalty: sampling.presence_penalty,
            frequency_penalty: sampling.frequency_penalty,
            top_logprobs,
            rng,
            counts: HashMap::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let log_norm = log_sum_exp(logits);
        let token = if self.temperature < GREEDY_BELOW {
            argmax(&self.penalized(logits))
        } else {
            self.draw(&self.penalized(logits))
        };
        *self.counts.entry(token).or_default() += 1;
        let logprob_of = |id: u32| logits[id as usize] - log_norm;
        Sampled {
            token,
            logprob: logprob_of(token),
            top: top_k(logits, self.top_logprobs)
                .into_iter()
                .map(|id| (id, logprob_of(id)))
                .collect(),
        }
    }

    fn penalized(&self, logits: &[f32]) -> Vec<f32> {
        let mut adjusted = logits.to_vec();
        if self.presence_penalty != 0.0 || self.frequency_penalty != 0.0 {
            for (&token, &count) in &self.counts {
                if let Some(logit) = adjusted.get_mut(token as usize) {
                    *logit -= self.presence_penalty + self.frequency_penalty * count as f32;
                }
            }
        }
        adjusted
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(id, &logit)| (id as u32, ((logit - max) / self.temperature).exp()))
            .filter(|(_, weight)| *weight > 0.0)
            .collect();
        if self.top_p < 1.0 {
            candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            let total: f32 = candidates.iter().map(|(_, w)| w).sum();
            let mut kept_mass = 0.0;
            let keep = candidates
                .iter()
                .position(|(_, w)| {
                    kept_mass += w / total;
                    kept_mass >= self.top_p
                })
                .map_or(candidates.len(), |last| last + 1);
            candidates.truncate(keep);
        }
        let total: f32 = candidates.iter().map(|(_, w)| w).sum();
        let mut target = self.rng.random::<f32>() * total;
        for &(id, weight) in &candidates {
            if target < weight {
                return id;
            }
            target -= weight;
        }
        candidates.last().map_or(0, |(id, _)| *id)
    }
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    max + sum.ln()
}

fn argmax(values: &[f32]) -> u32 {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(id, _)| id as u32)
}

fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    if k == 0 {
        return Vec::new();
    }
    let mut best: Vec<u32> = Vec::with_capacity(k + 1);
    for (id, &value) in values.iter().enumerate() {
        // A token the grammar ruled out is no alternative.
        if value == f32::NEG_INFINITY || (best.len() == k && value <= values[best[k - 1] as usize])
        {
            continue;
        }
        let at = best.partition_point(|&b| values[b as usize] >= value);
        best.insert(at, id as u32);
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        Sampling {
            temperature: Some(temperature),
            top_p: Some(top_p),
            seed: Some(seed),
            ..Sampling::default()
        }
    }

    #[test]
    fn greedy_takes_the_best_and_reports_true_logprobs() {
        let mut sampler = Sampler::new(&sampling(0.0, 1.0, 1), SamplingDefaults::default(), 2);
        let sampled = sampler.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(sampled.token, 1);
        let norm = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((sampled.logprob - (2.0 - norm)).abs() < 1e-5);
        assert_eq!(
            sampled.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(sampled.top.iter().all(|t| t.1 <= 0.0));
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&sampling(1.0, 0.9, seed), SamplingDefaults::default(), 0);
            (0..20).map(|_| s.sample(&logits).token).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 0 holds ~88% of the mass: with top_p 0.5 nothing else can be drawn.
        let mut sampler = Sampler::new(&sampling(1.0, 0.5, 3), SamplingDefaults::default(), 0);
        for _ in 0..100 {
            assert_eq!(sampler.sample(&[4.0, 1.0, 1.0, 0.0]).token, 0);
        }
    }

    #[test]
    fn the_models_defaults_fill_only_what_the_request_leaves_out() {
        let model = SamplingDefaults {
            temperature: 0.2,
            top_p: 0.9,
        };
        let greedy = Sampling {
            temperature: Some(0.0),
            ..Sampling::default()
        };
        let drawn = model.applied_to(&greedy);
        assert_eq!((drawn.temperature, drawn.top_p), (0.0, 0.9));
        let drawn = model.applied_to(&Sampling::default());
        assert_eq!((drawn.temperature, drawn.top_p), (0.2, 0.9));
    }

    #[test]
    fn frequency_penalty_discourages_repeats() {
        let mut sampler = Sampler::new(
            &Sampling {
                temperature: Some(0.0),
                frequency_penalty: 2.0,
                ..Sampling::default()
            },
            SamplingDefaults::default(),
            0,
        );
        assert_eq!(sampler.sample(&[1.0, 0.5]).token, 0);
        assert_eq!(sampler.sample(&[1.0, 0.5]).token, 1);
    }

    #[test]
    fn top_k_orders_best_first() {
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.7], 3), vec![1, 3, 2]);
        assert!(top_k(&[0.1], 0).is_empty());
    }
}
