//! The gold reward g(x, y): the testbed's stand-in for the person who asked (docs/testbed.md).
//!
//! Deterministic, documented, and hidden from the proxy RM and the policy: they see the prompt text,
//! never the [`Spec`] nor this code. Eight components, each in [0, 1]. Four are *gates*: they say
//! whether the answer is usable at all (on topic, not repetitive, not a copy of the prompt, fluent),
//! and multiply. Four say how well it follows the instructions, and average with a base credit:
//!
//! ```text
//! q = prod_{j in gates} (1 - s_j (1 - c_j))                   gate strengths s_j in [0, 1]
//! a = (b + sum_{i in instr} w_i c_i) / (b + sum_i w_i)        base b, weights w_i >= 0
//! g = 10 q a  in [0, 10]                                      (components_to_total)
//! ```
//!
//! | component        | c                                                                  | default     | catches |
//! |------------------|--------------------------------------------------------------------|-------------|---------|
//! | `relevance`      | ramp(cos(MiniLM(y), MiniLM(ref)); 0.15, 0.40), ref = topic description | gate 1.0 | off-topic text, generic filler |
//! | `repetition`     | ramp(mean(distinct-2, distinct-3) of the words; 0.25, 0.9)         | gate 0.8    | repeated words, phrases, sentences; keyword stuffing |
//! | `echo`           | 1 - ramp(share of the response's word trigrams found in the prompt; 0.1, 0.5) | gate 0.8 | restating the prompt and its constraints |
//! | `fluency`        | ramp(mean log p_init(y_t given x, y_<t); -4.5, -2.0)               | gate 0.8    | word salad, broken text |
//! | (base)           | 1                                                                  | weight 2.0  | credit for a usable answer that ignores every instruction |
//! | `required_words` | fraction of the required words present (simple inflections count) | weight 1.0  | ignored instruction |
//! | `length`         | 1 within [0.4 L, L] words; ramps from 0 below; 1 - (w - L)/L above, >= 0 | weight 1.5 | rambling past the limit, trivially short answers |
//! | `finished`       | 1 if the response ended with EOS, else 0                           | weight 1.5  | responses that never end (truncated) |
//! | `format`         | bullets: 1 - abs(k - n)/n; paragraph: 1/lines; sentence: 1/sentences; none: 1 | weight 1.0 | ignored layout |
//!
//! `ramp(v; lo, hi) = clamp((v - lo) / (hi - lo), 0, 1)`. An empty response scores 0 (relevance 0).
//! `fluency` is the mean per-token log-prob of the response's tokens under the frozen
//! SmolLM2-135M-Instruct given the chat-formatted prompt (no gradient, batched). It saturates at
//! -2.0 nats, where most of SmolLM2's own samples sit, so it only guards against broken text, and
//! loops (which pi_init finds very likely) gain nothing; `repetition` punishes those. A gate of
//! strength 0 removes its component; fluency's 0 also skips loading the LM.
//!
//! Why gates: an answer about football to a question about coffee, the same answer three times, or
//! "coffee beans roast coffee beans roast" is worth little to the asker however well it keeps the
//! word limit; a weighted mean would still give such answers most of the points.
//!
//! What a proxy RM is likely to miss, so that overoptimization can appear: a proxy trained with
//! Bradley-Terry on a few hundred or thousand gold-labelled pairs of pi_init samples learns the cheap
//! correlates of g among those samples, which are dominated by `finished`, `length`, `format` and
//! `required_words` (pi_init's samples are nearly always on topic, fluent and not repetitive, so the
//! gates barely vary there). It can learn "ends early", "mentions the topic words", "looks like a
//! list", but it sees almost no degenerate samples, so nothing tells it that repetition, keyword
//! stuffing, copying the prompt's wording ("Use the words ...") or broken text is bad, and it
//! cannot count words or list items reliably. RL against it can then raise the proxy by stuffing
//! the required words, echoing the prompt, or padding, and g falls through the gates and `length`.
use super::checks::{copied_share, distinct_n, format_score, ramp, required_words_score, words};
use super::prompts::{Spec, TestbedPrompt};
use crate::error::{Error, Result};
use crate::model::causal_lm::{CausalLm, Loaded};
use crate::model::generate::left_pad;
use crate::model::sentence::SentenceEncoder;
use crate::rl::reward_source::ResponseLogprobs;
use crate::tokenizer::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Gate strengths and instruction weights of `g = 10 q a` (see the module docs). Gates in [0, 1]
/// (0: off); weights >= 0, only their ratios to each other and to `base` matter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldWeights {
    /// Gate: on topic (MiniLM cosine). Default 1.0: an off-topic answer is worth nothing.
    pub relevance: f64,
    /// Gate: few repeated word pairs and triples. Default 0.8 (the same answer three times keeps
    /// about a third of its value).
    pub repetition: f64,
    /// Gate: does not copy the prompt's wording. Default 0.8.
    pub echo: f64,
    /// Gate: fluent under the frozen pi_init. Default 0.8. 0 turns fluency off (no LM loaded).
    pub fluency: f64,
    /// Credit of a usable answer that follows no instruction, in units of the weights below.
    /// Default 2.0 (ignoring every instruction keeps 2/7 of the score).
    pub base: f64,
    /// The required words are present. Default 1.0.
    pub required_words: f64,
    /// Within the word limit and not trivially short. Default 1.5.
    pub length: f64,
    /// Ended with EOS before the token budget. Default 1.5.
    pub finished: f64,
    /// Follows the requested layout (1 for prompts with no format). Default 1.0.
    pub format: f64,
}

impl Default for GoldWeights {
    fn default() -> Self {
        GoldWeights {
            relevance: 1.0,
            repetition: 0.8,
            echo: 0.8,
            fluency: 0.8,
            base: 2.0,
            required_words: 1.0,
            length: 1.5,
            finished: 1.5,
            format: 1.0,
        }
    }
}

impl GoldWeights {
    /// Gate strengths in `Components::gates` order.
    pub fn gates(&self) -> [f64; 4] {
        [self.relevance, self.repetition, self.echo, self.fluency]
    }
    /// Weights in `Components::instructions` order.
    pub fn weights(&self) -> [f64; 4] {
        [self.required_words, self.length, self.finished, self.format]
    }
}

/// The gold's settings. Defaults are the documented gold of docs/testbed.md; change them only with
/// a note there, since every testbed number depends on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoldConfig {
    pub weights: GoldWeights,
    /// MiniLM cosine (response vs the spec's reference text) at which relevance leaves 0, and at
    /// which it reaches 1. Defaults 0.15 and 0.40, from SmolLM2 samples (docs/testbed.md): on-topic
    /// answers 0.52 ± 0.16, the same answers against another topic 0.07 ± 0.09.
    pub relevance_lo: f64,
    pub relevance_hi: f64,
    /// Mean distinct-2/3 ratio at which repetition leaves 0, and reaches 1. Defaults 0.25 and 0.9
    /// (natural text of 20-60 words is >= 0.95; the same text twice is ~0.5, three times ~0.35).
    pub repetition_lo: f64,
    pub repetition_hi: f64,
    /// Share of the response's word trigrams found in the prompt at which echo starts to fall, and
    /// at which it reaches 0. Defaults 0.1 and 0.5 (naming a long topic copies a few trigrams).
    pub echo_lo: f64,
    pub echo_hi: f64,
    /// Below `min_words_frac * max_words` words the length component ramps down to 0. Default 0.4.
    pub min_words_frac: f64,
    /// Above the limit the length component falls linearly, reaching 0 at
    /// `(1 + overlength_zero) * max_words` words. Default 1.0 (0 at twice the limit).
    pub overlength_zero: f64,
    /// Mean token log-prob under pi_init at which fluency leaves 0, and reaches 1. Defaults -4.5 and
    /// -2.0 (SmolLM2's samples at T = 0.7: -1.40 ± 0.47 nats; shuffled words: about -6.8).
    pub fluency_lo: f64,
    pub fluency_hi: f64,
    /// The sentence encoder for relevance (path or alias). Default `all-minilm-l6-v2`.
    pub encoder: String,
    /// The frozen LM for fluency (path or alias). Default `smollm2-135m-instruct` (pi_init).
    pub fluency_model: String,
    /// Responses per fluency forward. Default 16.
    pub fluency_batch_size: usize,
    /// Response tokens scored for fluency (the rest is cut). Default 256.
    pub fluency_max_tokens: usize,
}

impl Default for GoldConfig {
    fn default() -> Self {
        GoldConfig {
            weights: GoldWeights::default(),
            relevance_lo: 0.15,
            relevance_hi: 0.40,
            repetition_lo: 0.25,
            repetition_hi: 0.9,
            echo_lo: 0.1,
            echo_hi: 0.5,
            min_words_frac: 0.4,
            overlength_zero: 1.0,
            fluency_lo: -4.5,
            fluency_hi: -2.0,
            encoder: "all-minilm-l6-v2".into(),
            fluency_model: "smollm2-135m-instruct".into(),
            fluency_batch_size: 16,
            fluency_max_tokens: 256,
        }
    }
}

impl GoldConfig {
    /// Cross-field checks: gates in [0, 1], weights >= 0 with a positive sum, each ramp's lo < hi,
    /// sizes >= 1.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Input(format!("gold config: {m}")));
        let w = &self.weights;
        if w.gates().iter().any(|s| !(0.0..=1.0).contains(s)) {
            return bad(format!("gate strengths (relevance, repetition, echo, fluency) {:?} must be in [0, 1]", w.gates()));
        }
        let ws = w.weights();
        if ws.iter().chain([&w.base]).any(|x| !(x.is_finite() && *x >= 0.0)) || w.base + ws.iter().sum::<f64>() <= 0.0 {
            return bad(format!("base {} and weights {:?} must be >= 0 with a positive sum", w.base, ws));
        }
        for (name, lo, hi) in [
            ("relevance", self.relevance_lo, self.relevance_hi),
            ("repetition", self.repetition_lo, self.repetition_hi),
            ("echo", self.echo_lo, self.echo_hi),
            ("fluency", self.fluency_lo, self.fluency_hi),
        ] {
            if lo.is_nan() || hi.is_nan() || lo >= hi {
                return bad(format!("{name}_lo = {lo} must be < {name}_hi = {hi}"));
            }
        }
        if !(self.min_words_frac >= 0.0 && self.min_words_frac <= 1.0) {
            return bad(format!("min_words_frac = {} must be in [0, 1]", self.min_words_frac));
        }
        if self.overlength_zero.is_nan() || self.overlength_zero <= 0.0 {
            return bad(format!("overlength_zero = {} must be > 0", self.overlength_zero));
        }
        if self.fluency_batch_size == 0 || self.fluency_max_tokens == 0 {
            return bad("fluency_batch_size and fluency_max_tokens must be >= 1".into());
        }
        Ok(())
    }
}

/// The eight components, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Components {
    pub relevance: f64,
    pub repetition: f64,
    pub echo: f64,
    /// 1 when fluency is off (its gate strength is 0).
    pub fluency: f64,
    pub required_words: f64,
    pub length: f64,
    pub finished: f64,
    pub format: f64,
}

impl Components {
    /// Component names in `as_array` order (metric names `gold/{name}`).
    pub const NAMES: [&'static str; 8] = ["relevance", "repetition", "echo", "fluency", "required_words", "length", "finished", "format"];

    pub fn as_array(&self) -> [f64; 8] {
        [self.relevance, self.repetition, self.echo, self.fluency, self.required_words, self.length, self.finished, self.format]
    }
    /// The gates: relevance, repetition, echo, fluency.
    pub fn gates(&self) -> [f64; 4] {
        [self.relevance, self.repetition, self.echo, self.fluency]
    }
    /// The instruction components: required_words, length, finished, format.
    pub fn instructions(&self) -> [f64; 4] {
        [self.required_words, self.length, self.finished, self.format]
    }
}

/// `g = 10 q a` with `q = prod_j (1 - s_j (1 - c_j))` over the gates and
/// `a = (base + sum_i w_i c_i) / (base + sum_i w_i)` over the instruction components: in [0, 10]
/// for components in [0, 1].
pub fn components_to_total(c: &Components, w: &GoldWeights) -> f64 {
    let q: f64 = c.gates().iter().zip(w.gates()).map(|(c, s)| 1.0 - s * (1.0 - c)).product();
    let ws = w.weights();
    let a = (w.base + c.instructions().iter().zip(ws).map(|(c, w)| c * w).sum::<f64>()) / (w.base + ws.iter().sum::<f64>());
    10.0 * q * a
}

/// One response's gold score: the total, its components, and the raw measurements behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldScore {
    pub total: f64,
    pub components: Components,
    /// MiniLM cosine between the response and the spec's reference text (0 for an empty response).
    pub cosine: f64,
    /// Mean token log-prob under pi_init (nats); `None` when fluency is off or the response is empty.
    pub mean_logprob: Option<f64>,
    /// Words in the response (as [`words`] counts them).
    pub words: usize,
    /// mean(distinct-2, distinct-3) of the words.
    pub distinct: f64,
    /// Share of the response's word trigrams that occur in the prompt.
    pub copied: f64,
}

// ------------------------------------------------------------------------------------------------
// The components of a response's text, from the checks (`super::checks`).

/// 1 within `[min_words_frac * max, max]` words, a linear ramp from 0 words below, and a linear fall
/// above, reaching 0 at `(1 + overlength_zero) * max` words.
pub fn length_score(n_words: usize, max_words: usize, cfg: &GoldConfig) -> f64 {
    let (w, l) = (n_words as f64, max_words.max(1) as f64);
    let lo = (cfg.min_words_frac * l).ceil().max(1.0);
    if w < lo {
        w / lo
    } else if w <= l {
        1.0
    } else {
        (1.0 - (w - l) / (cfg.overlength_zero * l)).max(0.0)
    }
}

/// What the text alone gives: every component but relevance and fluency (left at 0), and the raw
/// measurements behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct TextChecks {
    pub components: Components,
    pub words: usize,
    pub distinct: f64,
    pub copied: f64,
}

/// The components that need no model, for `response` to `prompt`.
pub fn text_components(prompt: &TestbedPrompt, response: &str, finished: bool, cfg: &GoldConfig) -> TextChecks {
    let spec: &Spec = &prompt.spec;
    let ws = words(response);
    let finished = if finished { 1.0 } else { 0.0 };
    if ws.is_empty() {
        let components = Components { finished, ..Default::default() };
        return TextChecks { components, words: 0, distinct: 0.0, copied: 0.0 };
    }
    let distinct = 0.5 * (distinct_n(&ws, 2) + distinct_n(&ws, 3));
    let copied = copied_share(&ws, &words(&prompt.text));
    let components = Components {
        relevance: 0.0,
        repetition: ramp(distinct, cfg.repetition_lo, cfg.repetition_hi),
        echo: 1.0 - ramp(copied, cfg.echo_lo, cfg.echo_hi),
        fluency: 0.0,
        required_words: required_words_score(&ws, &spec.required_words),
        length: length_score(ws.len(), spec.max_words, cfg),
        finished,
        format: format_score(response, spec.format.as_ref()),
    };
    TextChecks { components, words: ws.len(), distinct, copied }
}

// ------------------------------------------------------------------------------------------------
// The gold with its models.

/// The gold reward with its frozen models: MiniLM for relevance, and pi_init for fluency when its
/// gate is on.
pub struct Gold {
    pub cfg: GoldConfig,
    pub encoder: SentenceEncoder,
    /// pi_init and its tokenizer (None when the fluency gate is 0).
    pub lm: Option<Loaded>,
}

impl Gold {
    /// Validates `cfg`, loads the encoder, and the fluency LM when `cfg.weights.fluency > 0`.
    pub fn load(cfg: GoldConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let encoder = SentenceEncoder::from_dir(&crate::paths::resolve_model(&cfg.encoder)?, device)?;
        let lm = if cfg.weights.fluency > 0.0 { Some(CausalLm::load_path(&cfg.fluency_model, device)?) } else { None };
        Self::from_parts(cfg, encoder, lm)
    }

    /// From models already loaded (e.g. to share them); `lm` is required when the fluency
    /// gate is > 0, and dropped when it is 0.
    pub fn from_parts(cfg: GoldConfig, encoder: SentenceEncoder, lm: Option<Loaded>) -> Result<Self> {
        cfg.validate()?;
        if cfg.weights.fluency > 0.0 && lm.is_none() {
            return Err(Error::Input("gold: a fluency gate > 0 needs the fluency LM".into()));
        }
        let lm = if cfg.weights.fluency > 0.0 { lm } else { None };
        Ok(Gold { cfg, encoder, lm })
    }

    /// Gold scores of `responses[i]` to `prompts[i]`; `finished[i]`: the response ended with EOS (not
    /// cut by the token budget). Pass the response text without the EOS token. Batched: one MiniLM
    /// encode for all responses and references, fluency forwards of `fluency_batch_size`.
    pub fn score(&self, prompts: &[&TestbedPrompt], responses: &[&str], finished: &[bool]) -> Result<Vec<GoldScore>> {
        self.score_with(prompts, responses, finished, None)
    }

    /// [`Gold::score`], with fluency log-probs already known for some responses (`known[i]` for
    /// response i; see [`ResponseLogprobs`]): the same scores up to float rounding, without the LM
    /// pass for those responses.
    pub fn score_with(
        &self,
        prompts: &[&TestbedPrompt],
        responses: &[&str],
        finished: &[bool],
        known: Option<&[Option<ResponseLogprobs>]>,
    ) -> Result<Vec<GoldScore>> {
        let n = prompts.len();
        if responses.len() != n || finished.len() != n || known.is_some_and(|k| k.len() != n) {
            return Err(Error::Input(format!(
                "gold: {n} prompts, {} responses, {} finished flags and {} known log-prob rows must match",
                responses.len(),
                finished.len(),
                known.map_or(n, |k| k.len())
            )));
        }
        let _guard = tch::no_grad_guard();
        let mut checks: Vec<TextChecks> = (0..n).map(|i| text_components(prompts[i], responses[i], finished[i], &self.cfg)).collect();
        let nonempty: Vec<usize> = (0..n).filter(|&i| checks[i].words > 0).collect();

        let cosines = self.cosines(prompts, responses, &nonempty)?;
        let logprobs = match &self.lm {
            Some(lm) => Some(self.mean_logprobs(lm, prompts, responses, &nonempty, known)?),
            None => None,
        };
        let mut scores = Vec::with_capacity(n);
        for (i, t) in checks.iter_mut().enumerate() {
            let c = &mut t.components;
            let cosine = cosines[i];
            let mean_logprob = logprobs.as_ref().and_then(|l| l[i]);
            if t.words > 0 {
                c.relevance = ramp(cosine, self.cfg.relevance_lo, self.cfg.relevance_hi);
            }
            c.fluency = match (&self.lm, mean_logprob) {
                (None, _) => 1.0, // off: a gate of strength 0
                (Some(_), Some(lp)) => ramp(lp, self.cfg.fluency_lo, self.cfg.fluency_hi),
                (Some(_), None) => 0.0,
            };
            scores.push(GoldScore {
                total: components_to_total(c, &self.cfg.weights),
                components: *c,
                cosine,
                mean_logprob,
                words: t.words,
                distinct: t.distinct,
                copied: t.copied,
            });
        }
        Ok(scores)
    }

    /// MiniLM cosine of each listed response with its prompt's reference text (0 elsewhere). One
    /// encode call over the responses and the distinct references.
    fn cosines(&self, prompts: &[&TestbedPrompt], responses: &[&str], idx: &[usize]) -> Result<Vec<f64>> {
        let mut cos = vec![0.0; prompts.len()];
        if idx.is_empty() {
            return Ok(cos);
        }
        let mut refs: Vec<String> = Vec::new();
        let mut ref_of: HashMap<String, usize> = HashMap::new();
        let mut row_ref = Vec::with_capacity(idx.len());
        for &i in idx {
            let r = prompts[i].spec.reference_text();
            let next = refs.len();
            let j = *ref_of.entry(r.clone()).or_insert(next);
            if j == next {
                refs.push(r);
            }
            row_ref.push((idx.len() + j) as i64);
        }
        let mut texts: Vec<&str> = idx.iter().map(|&i| responses[i]).collect();
        texts.extend(refs.iter().map(|s| s.as_str()));
        let e = self.encoder.encode(&texts)?; // (R + U, 384), unit rows
        let resp = e.narrow(0, 0, idx.len() as i64); // (R, 384)
        let refe = e.index_select(0, &Tensor::from_slice(&row_ref).to_device(e.device())); // (R, 384)
        let c = (resp * refe).sum_dim_intlist(-1, false, Kind::Float).to_device(Device::Cpu); // (R)
        let c = Vec::<f32>::try_from(&c)?;
        for (k, &i) in idx.iter().enumerate() {
            cos[i] = f64::from(c[k]);
        }
        Ok(cos)
    }

    /// The tokens fluency scores: the chat-formatted prompt's ids and the response text's ids (cut
    /// to `fluency_max_tokens`) under the fluency LM's tokenizer; `None` when fluency is off.
    pub fn fluency_tokens(&self, prompt: &TestbedPrompt, response: &str) -> Result<Option<(Vec<i64>, Vec<i64>)>> {
        let Some(lm) = &self.lm else { return Ok(None) };
        let tok = &lm.tokenizer;
        let chat = tok.apply_chat_template(&[Message::user(prompt.text.clone())], true)?;
        let p: Vec<i64> = tok.encode(&chat, false)?.into_iter().map(i64::from).collect();
        let mut r: Vec<i64> = tok.encode(response, false)?.into_iter().map(i64::from).collect();
        r.truncate(self.cfg.fluency_max_tokens);
        Ok(Some((p, r)))
    }

    /// Mean log-prob of each listed response's tokens under `lm` given the chat-formatted prompt
    /// (`None` elsewhere, and for a response with no tokens); from `known` where it holds these
    /// tokens, else from a pass of `lm`.
    fn mean_logprobs(
        &self,
        lm: &Loaded,
        prompts: &[&TestbedPrompt],
        responses: &[&str],
        idx: &[usize],
        known: Option<&[Option<ResponseLogprobs>]>,
    ) -> Result<Vec<Option<f64>>> {
        let mut out = vec![None; prompts.len()];
        let tok = &lm.tokenizer;
        // (index, prompt ids, response ids)
        let mut items = Vec::with_capacity(idx.len());
        for &i in idx {
            let Some((p, r)) = self.fluency_tokens(prompts[i], responses[i])? else { continue };
            if r.is_empty() || p.is_empty() {
                continue;
            }
            let k = known.and_then(|k| k[i].as_ref());
            match k {
                Some(k)
                    if k.prompt == p
                        && k.response.len() >= r.len()
                        && k.logprobs.len() == k.response.len()
                        && k.response[..r.len()] == r[..] =>
                {
                    let sum: f64 = k.logprobs[..r.len()].iter().map(|&x| f64::from(x)).sum();
                    out[i] = Some(sum / r.len() as f64);
                }
                _ => items.push((i, p, r)),
            }
        }
        // Similar lengths share a batch (less padding); a stable sort keeps the order deterministic.
        items.sort_by_key(|(_, p, r)| p.len() + r.len());
        let pad = i64::from(tok.pad_id());
        for chunk in items.chunks(self.cfg.fluency_batch_size) {
            let seqs: Vec<Vec<i64>> = chunk.iter().map(|(_, p, r)| [p.as_slice(), r.as_slice()].concat()).collect();
            let (ids, mask) = left_pad(&seqs, pad, lm.model.device); // (B, T)
            let t = ids.size()[1];
            // Left-padded: row b's r_b response tokens are its last r_b; the states at flat
            // positions b*T + T-1-r_b .. b*T + T-2 predict them. The LM head runs on those only
            // (N = sum r_b rows, not B x max r_b).
            let (mut at, mut next) = (Vec::new(), Vec::new());
            for (b, (_, _, r)) in chunk.iter().enumerate() {
                let (b, rl) = (b as i64, r.len() as i64);
                at.extend((t - 1 - rl..t - 1).map(|j| b * t + j));
                next.extend(r.iter().copied());
            }
            let dev = lm.model.device;
            let h = lm.model.forward_hidden(&ids, &mask, false)?.last; // (B, T, D)
            let hs = h.view([-1, h.size()[2]]).index_select(0, &Tensor::from_slice(&at).to_device(dev)); // (N, D)
            let logits = lm.model.logits(&hs).to_kind(Kind::Float); // (N, V)
            let next = Tensor::from_slice(&next).to_device(dev).unsqueeze(-1); // (N, 1)
            let lp = logits.gather(-1, &next, false).squeeze_dim(-1) - logits.logsumexp([-1], false); // (N)
            let lp = Vec::<f32>::try_from(&lp.to_device(Device::Cpu))?;
            let mut off = 0;
            for (i, _, r) in chunk {
                let sum: f64 = lp[off..off + r.len()].iter().map(|&x| f64::from(x)).sum();
                out[*i] = Some(sum / r.len() as f64);
                off += r.len();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::prompts::{Format, Task};

    fn prompt(format: Option<Format>) -> TestbedPrompt {
        let spec = Spec {
            topic: "coffee".into(),
            description: "Coffee is a drink.".into(),
            task: Task::Explain,
            required_words: vec!["beans".into(), "roast".into()],
            max_words: 20,
            format,
        };
        let text = "Explain coffee to a beginner. Use the words \"beans\" and \"roast\". No more than 20 words.".into();
        TestbedPrompt { id: "t".into(), text, spec }
    }

    #[test]
    fn length_shape() {
        let c = GoldConfig::default();
        assert_eq!(length_score(0, 40, &c), 0.0);
        assert_eq!(length_score(8, 40, &c), 0.5);
        assert_eq!(length_score(16, 40, &c), 1.0);
        assert_eq!(length_score(40, 40, &c), 1.0);
        assert_eq!(length_score(50, 40, &c), 0.75);
        assert_eq!(length_score(80, 40, &c), 0.0);
        assert_eq!(length_score(200, 40, &c), 0.0);
    }

    #[test]
    fn text_components_of_empty_clean_and_echo() {
        let cfg = GoldConfig::default();
        let p = prompt(Some(Format::Sentence));
        let t = text_components(&p, "", true, &cfg);
        let c = t.components;
        assert_eq!((t.words, c.finished, c.length, c.format, c.required_words), (0, 1.0, 0.0, 0.0, 0.0));
        let t = text_components(&p, "Coffee is made by roasting beans and brewing them with hot water.", false, &cfg);
        let c = t.components;
        assert_eq!((t.words, t.distinct, t.copied), (12, 1.0, 0.0));
        assert_eq!((c.required_words, c.length, c.repetition, c.echo, c.finished, c.format), (1.0, 1.0, 1.0, 1.0, 0.0, 1.0));
        // Restating the constraints: 3 of 4 trigrams come from the prompt.
        let t = text_components(&p, "Beans. No more than 20 words.", true, &cfg);
        assert_eq!((t.copied, t.components.echo), (0.75, 0.0));
    }

    #[test]
    fn total_is_gates_times_instructions() {
        let w = GoldWeights::default();
        let ones = Components {
            relevance: 1.0,
            repetition: 1.0,
            echo: 1.0,
            fluency: 1.0,
            required_words: 1.0,
            length: 1.0,
            finished: 1.0,
            format: 1.0,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(components_to_total(&ones, &w), 10.0));
        assert_eq!(components_to_total(&Components::default(), &w), 0.0, "relevance 0 gates everything");
        // Usable but follows no instruction: base / (base + sum w) = 2 / 7.
        let usable = Components { relevance: 1.0, repetition: 1.0, echo: 1.0, fluency: 1.0, ..Default::default() };
        assert!(close(components_to_total(&usable, &w), 20.0 / 7.0));
        // A gate of strength 0.8 at 0 keeps 0.2; two such gates multiply.
        assert!(close(components_to_total(&Components { repetition: 0.0, ..ones }, &w), 2.0));
        assert!(close(components_to_total(&Components { repetition: 0.0, echo: 0.0, ..ones }, &w), 0.4));
        // Truncated: loses finished's 1.5 of 7.
        assert!(close(components_to_total(&Components { finished: 0.0, ..ones }, &w), 10.0 * 5.5 / 7.0));
        // A gate of strength 0 is off.
        let no_flu = GoldWeights { fluency: 0.0, ..w.clone() };
        assert!(close(components_to_total(&Components { fluency: 0.0, ..ones }, &no_flu), 10.0));
    }

    #[test]
    fn config_validation() {
        assert!(GoldConfig::default().validate().is_ok());
        let mut c = GoldConfig::default();
        c.relevance_lo = 0.9;
        assert!(c.validate().is_err());
        let mut c = GoldConfig::default();
        c.weights.echo = 1.5;
        assert!(c.validate().is_err(), "a gate is at most 1");
        let mut c = GoldConfig::default();
        c.weights = GoldWeights { base: 0.0, required_words: 0.0, length: 0.0, finished: 0.0, format: 0.0, ..Default::default() };
        assert!(c.validate().is_err());
        let c: GoldConfig = toml::from_str("relevance_hi = 0.6\n[weights]\nfluency = 0.0\n").unwrap();
        assert_eq!((c.relevance_hi, c.weights.fluency, c.weights.relevance), (0.6, 0.0, 1.0));
        assert!(toml::from_str::<GoldConfig>("bogus = 1").is_err());
    }
}
