//! Gold-labelled preference pairs (docs/testbed.md): two pi_init samples per prompt, labelled by the
//! gold reward, with label noise as in Coste et al. 2024 (a fixed flip rate, or Bradley-Terry
//! sampling from sigmoid(g_a - g_b)). Written as conversational TRL preference JSONL with the gold
//! scores and the spec kept as extra columns.
use crate::data::{Origin, PreferenceExample, Text};
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
use crate::model::generate::{generate, GenerateConfig, Sampling};
use crate::testbed::gold::Gold;
use crate::testbed::prompts::{generate_split, Split, TestbedPrompt};
use crate::tokenizer::{Message, Tokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Noise {
    /// Flip each label with probability `p` (Coste et al.: 25%).
    Flip { p: f64 },
    /// Label a > b with probability sigmoid((g_a - g_b) / temperature).
    Bt { temperature: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsConfig {
    pub split: Split,
    pub n_prompts: usize,
    /// Seeds sampling and noise (the prompt pool itself is fixed: seed 0, as in `r2m rl`).
    pub seed: u64,
    pub temperature: f64,
    pub max_new_tokens: i64,
    pub batch: usize,
    pub noise: Noise,
}

impl Default for PairsConfig {
    fn default() -> Self {
        PairsConfig {
            split: Split::Train,
            n_prompts: 1000,
            seed: 0,
            temperature: 1.0,
            max_new_tokens: 64,
            batch: 32,
            noise: Noise::Flip { p: 0.25 },
        }
    }
}

/// One labelled pair with its gold scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GoldPair {
    pub id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub gold_chosen: f64,
    pub gold_rejected: f64,
    /// Whether noise flipped the gold order.
    pub flipped: bool,
    pub spec: crate::testbed::prompts::Spec,
}

impl GoldPair {
    pub fn to_example(&self, origin: Origin) -> PreferenceExample {
        let msg = |role: &str, c: &str| vec![Message { role: role.into(), content: c.to_string() }];
        PreferenceExample {
            prompt: Some(Text::Chat(msg("user", &self.prompt))),
            chosen: Text::Chat(msg("assistant", &self.chosen)),
            rejected: Text::Chat(msg("assistant", &self.rejected)),
            origin,
        }
    }
}

/// Samples two responses per prompt from `model`, scores them with `gold`, labels them with noise.
/// Pairs whose two responses are identical or tie exactly in gold are dropped (counted in the
/// second return value): they carry no preference.
pub fn make_pairs(
    model: &CausalLm,
    tok: &Tokenizer,
    gold: &Gold,
    cfg: &PairsConfig,
    mut progress: impl FnMut(usize),
) -> Result<(Vec<GoldPair>, usize)> {
    let prompts = generate_split(cfg.split, cfg.n_prompts, 0)?;
    let eos: Vec<i64> = tok.eos_ids().into_iter().map(i64::from).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7061_6972);
    let (mut out, mut dropped) = (vec![], 0usize);
    for (bi, chunk) in prompts.chunks(cfg.batch.max(1)).enumerate() {
        let mut ids = vec![];
        for p in chunk {
            let text = tok.apply_chat_template(&[Message { role: "user".into(), content: p.text.clone() }], true)?;
            let x: Vec<i64> = tok.encode(&text, false)?.into_iter().map(i64::from).collect();
            ids.push(x.clone());
            ids.push(x);
        }
        let g = generate(
            model,
            &ids,
            &GenerateConfig {
                max_new_tokens: cfg.max_new_tokens,
                sampling: Sampling::Sample { temperature: cfg.temperature, top_k: None, top_p: None },
                seed: cfg.seed.wrapping_mul(1_000_003).wrapping_add(bi as u64),
                eos_ids: eos.clone(),
                pad_id: tok.pad_id() as i64,
                return_hidden: false,
                return_trunk: None,
                stop_check_every: 4,
                pack_weights: None,
                cpu_kernels: true,
            },
        )?;
        let (mut texts, mut fin) = (vec![], vec![]);
        for i in 0..ids.len() as i64 {
            let r = g.response(i);
            fin.push(r.last().is_some_and(|t| eos.contains(t)));
            let body: Vec<u32> = r.iter().filter(|t| !eos.contains(t)).map(|&t| t as u32).collect();
            texts.push(tok.decode(&body, true)?);
        }
        let tps: Vec<&TestbedPrompt> = chunk.iter().flat_map(|p| [p, p]).collect();
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let scores = gold.score(&tps, &refs, &fin)?;
        for (j, p) in chunk.iter().enumerate() {
            let (a, b) = (2 * j, 2 * j + 1);
            let (ga, gb) = (scores[a].total, scores[b].total);
            if texts[a] == texts[b] || ga == gb {
                dropped += 1;
                continue;
            }
            let a_wins_gold = ga > gb;
            let a_wins = match cfg.noise {
                Noise::Flip { p } => a_wins_gold ^ (rng.gen::<f64>() < p),
                Noise::Bt { temperature } => rng.gen::<f64>() < 1.0 / (1.0 + (-(ga - gb) / temperature).exp()),
            };
            let (w, l) = if a_wins { (a, b) } else { (b, a) };
            out.push(GoldPair {
                id: p.id.clone(),
                prompt: p.text.clone(),
                chosen: texts[w].clone(),
                rejected: texts[l].clone(),
                gold_chosen: scores[w].total,
                gold_rejected: scores[l].total,
                flipped: a_wins != a_wins_gold,
                spec: p.spec.clone(),
            });
        }
        progress(chunk.len());
    }
    Ok((out, dropped))
}

/// Writes pairs as conversational TRL preference JSONL (+ `gold_chosen`, `gold_rejected`,
/// `flipped`, `id`, `spec` columns), atomically.
pub fn write_jsonl(path: &Path, pairs: &[GoldPair]) -> Result<()> {
    let mut buf = vec![];
    for p in pairs {
        let rec = serde_json::json!({
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
            "gold_chosen": p.gold_chosen, "gold_rejected": p.gold_rejected, "flipped": p.flipped,
            "id": p.id, "spec": p.spec,
        });
        writeln!(buf, "{rec}").map_err(|e| Error::io(path, e))?;
    }
    crate::checkpoint::write_atomic(path, &buf)
}
