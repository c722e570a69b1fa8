//! Batched KV-cache generation: left-padded prompts, temperature / top-k / top-p sampling, EOS
//! stop, one seed. Returns the sampled ids with their log-probs under the temperature-scaled
//! distribution, which equal the trainer's `CausalLm::token_logprobs` at the same temperature
//! (docs/rl-conventions.md, "Generation"; tested in tests/it).
//!
//! Shapes: B = prompts, P = padded prompt length, N = max_new_tokens, V = vocab, D = hidden.
use crate::error::{Error, Result};
use crate::model::kernels::KernelScope;
use crate::model::kv_cache::KvCache;
use crate::model::packed;
use crate::model::precision::Widen;
use crate::model::{attention::Masks, causal_lm::CausalLm, decoder::positions_from_mask};
use crate::profile::span;
use tch::{Device, Kind, Tensor};

/// How the next token is picked.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// argmax; log-probs are reported at temperature 1.
    Greedy,
    /// Sample from softmax(logits / temperature), optionally truncated to the top-k tokens and the
    /// top-p nucleus. Reported log-probs are those of softmax(logits / temperature), before the
    /// truncation (what the trainer recomputes).
    Sample { temperature: f64, top_k: Option<i64>, top_p: Option<f64> },
}

impl Sampling {
    /// temperature 0 means greedy, as in most CLIs.
    pub fn from_args(temperature: f64, top_k: Option<i64>, top_p: Option<f64>) -> Result<Self> {
        if temperature < 0.0 || !temperature.is_finite() {
            return Err(Error::Input(format!("temperature = {temperature} must be >= 0")));
        }
        if let Some(p) = top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Input(format!("top_p = {p} must be in (0, 1]")));
            }
        }
        if let Some(k) = top_k {
            if k < 1 {
                return Err(Error::Input(format!("top_k = {k} must be >= 1")));
            }
        }
        Ok(if temperature == 0.0 { Sampling::Greedy } else { Sampling::Sample { temperature, top_k, top_p } })
    }

    pub fn temperature(&self) -> f64 {
        match self {
            Sampling::Greedy => 1.0,
            Sampling::Sample { temperature, .. } => *temperature,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: i64,
    pub sampling: Sampling,
    /// Seeds torch's generator at the start of the call: same seed, same samples (on CPU).
    pub seed: u64,
    /// Tokens that end a response (included in it, with mask 1).
    pub eos_ids: Vec<i64>,
    /// Filler for prompts' left padding and for positions after EOS.
    pub pad_id: i64,
    /// Also return the final hidden states of prompt + response (one extra decode step).
    pub return_hidden: bool,
    /// Also return the input of block k (the output of a frozen trunk of k blocks) for prompt +
    /// response (one extra decode step), for `CausalLm::token_logprobs_from_trunk`.
    pub return_trunk: Option<usize>,
    /// Check for "all rows finished" every this many tokens (each check is a host sync on GPU).
    pub stop_check_every: i64,
    /// Decode with MKL-packed weights (`model::packed`): `None` = when it pays (CPU, f32, at
    /// least `packed::MIN_BATCH` rows, memory for a second copy of the weights, libtorch built with
    /// MKL), `Some(false)` = never, `Some(true)` = always (an error where libtorch has no MKL).
    /// Same results either way. With `None` and `cpu_kernels`, r2m's decode GEMM takes MKL's place
    /// where it is faster (below). (bf16 models decode with bf16 weight copies instead.)
    pub pack_weights: Option<bool>,
    /// Use r2m's CPU kernels (csrc/decode.cpp) where they apply; false: ATen's ops. Sampling: one
    /// pass over each row of the logits, no (B, V) temporaries (CPU, plain temperature sampling
    /// without top-k or top-p); the same tokens either way up to rounding at the sampling
    /// boundaries, log-probs and entropies agree to ~1e-6 (tested). Batch 1 on CPUs where it is
    /// faster than MKL's gemv (`ffi::matvec_preferred`; f32, `pack_weights` not `Some(true)`):
    /// the streaming matrix-vector kernel for each decode step's products. Batches of
    /// `packed::MIN_BATCH` rows or more on CPUs where it is faster than MKL's packed GEMM
    /// (`ffi::gemm_preferred`; f32, `pack_weights` not `Some(true)`): r2m's decode GEMM, which
    /// prefetches each weight's next panel while it multiplies one. Decode steps in f32:
    /// attention over the KV cache, RMS norms, RoPE and SiLU, each in one kernel (`model::kernels`).
    pub cpu_kernels: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 64,
            sampling: Sampling::Sample { temperature: 0.7, top_k: None, top_p: None },
            seed: 0,
            eos_ids: vec![],
            pad_id: 0,
            return_hidden: false,
            return_trunk: None,
            stop_check_every: 4,
            pack_weights: None,
            cpu_kernels: true,
        }
    }
}

/// The result of one batched call.
pub struct Generation {
    /// Left-padded prompts (B, P) and their mask.
    pub prompt_ids: Tensor,
    pub prompt_mask: Tensor,
    /// Response tokens (B, N'), N' <= N (the loop stops when every row has ended); pad after EOS.
    pub ids: Tensor,
    /// log softmax(logits / T) of each response token (B, N'), f32; 0 where masked.
    pub logprobs: Tensor,
    /// 1 on response tokens up to and including EOS (B, N').
    pub mask: Tensor,
    /// Final hidden states of prompt + response (B, P + N', D), on request.
    pub hidden: Option<Tensor>,
    /// The input of block `return_trunk` for prompt + response (B, P + N', D), on request.
    pub trunk: Option<Tensor>,
    /// Entropy of softmax(logits / T) at each response token (B, N'), f32; 0 where masked.
    pub entropy: Tensor,
}

impl Generation {
    /// Prompt + response ids (B, P + N') and mask: the trainer's input.
    pub fn sequences(&self) -> (Tensor, Tensor) {
        (Tensor::cat(&[&self.prompt_ids, &self.ids], 1), Tensor::cat(&[&self.prompt_mask, &self.mask.to_kind(self.prompt_mask.kind())], 1))
    }

    /// Response ids of row `i` up to and including EOS.
    pub fn response(&self, i: i64) -> Vec<i64> {
        let n: i64 = self.mask.get(i).sum(Kind::Int64).int64_value(&[]);
        Vec::<i64>::try_from(self.ids.get(i).narrow(0, 0, n)).unwrap_or_default()
    }
}

/// Left-pads `prompts` into (B, P) ids and mask (int64, on `dev`).
pub fn left_pad(prompts: &[Vec<i64>], pad_id: i64, dev: Device) -> (Tensor, Tensor) {
    let p = prompts.iter().map(|x| x.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * p);
    let mut mask = Vec::with_capacity(prompts.len() * p);
    for x in prompts {
        let pad = p - x.len();
        ids.extend(std::iter::repeat_n(pad_id, pad).chain(x.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, x.len())));
    }
    let shape = [prompts.len() as i64, p as i64];
    (Tensor::from_slice(&ids).view(shape).to_device(dev), Tensor::from_slice(&mask).view(shape).to_device(dev))
}

/// Picks the next tokens from `logits` (B, V): returns (tokens (B), log-probs at temperature (B),
/// entropy of the temperature-scaled distribution (B)).
fn pick(logits: &Tensor, s: &Sampling, kernel: bool) -> (Tensor, Tensor, Tensor) {
    let logits = logits.widen();
    let fk = logits.kind();
    // The kernel reads f32 logits; f64 ones take the ops below.
    if let (Sampling::Sample { temperature, top_k: None, top_p }, Device::Cpu, true, Kind::Float) = (s, logits.device(), kernel, fk) {
        if top_p.is_none_or(|p| p >= 1.0) {
            // The same inverse-CDF draw as `draw`, from the same uniform, with the log-prob and
            // the entropy, in one pass over each row of the logits (a CPU kernel).
            let u = Tensor::rand([logits.size()[0]], (Kind::Double, Device::Cpu));
            if let Ok(picked) = crate::ffi::sample_logits(&logits, *temperature, &u, crate::ffi::KernelBuild::Best) {
                return picked;
            }
        }
    }
    let logp = (&logits / s.temperature()).log_softmax(-1, fk); // (B, V)
    let probs = logp.exp();
    let entropy = -(&probs * &logp).sum_dim_intlist([-1i64].as_slice(), false, fk);
    let tok = match s {
        Sampling::Greedy => logits.argmax(-1, false),
        Sampling::Sample { top_k, top_p, .. } => {
            let mut w = probs; // unnormalised weights of the tokens still allowed
            if let Some(k) = top_k {
                let k = (*k).min(w.size()[1]);
                let kth = logp.topk(k, -1, true, true).0.narrow(1, k - 1, 1); // (B, 1)
                w = w.masked_fill(&logp.lt_tensor(&kth), 0.0);
            }
            if let Some(p) = top_p.filter(|p| *p < 1.0) {
                // Nucleus: keep the smallest prefix of tokens (by probability) whose mass reaches p
                // of what top-k left.
                let (sorted, idx) = w.sort(-1, true);
                let sorted = &sorted / sorted.sum_dim_intlist([-1i64].as_slice(), true, fk);
                let before = sorted.cumsum(-1, fk) - &sorted; // mass strictly before each token
                let drop_sorted = before.ge(p); // as HF TopPLogitsWarper: drop once the mass before reaches p
                let drop = drop_sorted.scatter(-1, &idx, &drop_sorted);
                w = w.masked_fill(&drop, 0.0);
            }
            draw(&w)
        }
    };
    let lp = logp.gather(-1, &tok.unsqueeze(-1), false).squeeze_dim(-1);
    (tok, lp, entropy)
}

/// One token per row of `weights` (B, V) (non-negative, not necessarily normalised), with
/// probability proportional to its weight: inverse-CDF sampling, one uniform draw per row from
/// torch's generator. Same distribution as `multinomial(1)`, which on the CPU draws an exponential
/// variate per vocabulary entry (about 40 ms of a 140 ms decode step at batch 32 for SmolLM2;
/// docs/benchmarks.md). The CDF is accumulated in f64 and divided by its own total, so its last
/// entry is exactly 1 and u < 1 always lands on a token; a zero-weight token has an empty interval
/// and is never drawn.
pub fn draw(weights: &Tensor) -> Tensor {
    let (b, v) = weights.size2().expect("draw: weights must be (B, V)");
    let cdf = weights.cumsum(-1, Kind::Double);
    let cdf = &cdf / cdf.narrow(1, v - 1, 1);
    let u = Tensor::rand([b, 1], (Kind::Double, weights.device()));
    // Clamped: a row without weight (NaN from NaN logits) must not index past the vocabulary; its
    // NaN log-probs reach the trainer's NaN guard.
    u.searchsorted(&cdf, false, true, "right", None::<Tensor>).squeeze_dim(-1).clamp_max(v - 1)
}

/// Generates for a batch of tokenized prompts. Errors (naming the prompt) on an empty prompt or a
/// prompt plus `max_new_tokens` longer than the model's context.
pub fn generate(model: &CausalLm, prompts: &[Vec<i64>], cfg: &GenerateConfig) -> Result<Generation> {
    generate_stream(model, prompts, cfg, &mut |_, _| {})
}

/// `generate` in calls of at most `rows` prompts (a memory budget: `rl.generation_batch`), the
/// results put together as one call's would be: prompts left-padded to the longest, responses
/// right-padded to the longest (pad ids, mask 0, log-prob and entropy 0, zero hidden states).
/// Call c is seeded with `cfg.seed + c`, so the samples depend on `rows`; with `rows` >= the
/// prompts it is `generate` itself.
pub fn generate_in_calls(model: &CausalLm, prompts: &[Vec<i64>], cfg: &GenerateConfig, rows: usize) -> Result<Generation> {
    if rows == 0 || rows >= prompts.len() {
        return generate(model, prompts, cfg);
    }
    let parts = prompts
        .chunks(rows)
        .enumerate()
        .map(|(c, ch)| generate(model, ch, &GenerateConfig { seed: cfg.seed.wrapping_add(c as u64), ..cfg.clone() }))
        .collect::<Result<Vec<_>>>()?;
    let p = parts.iter().map(|g| g.prompt_ids.size()[1]).max().unwrap_or(0);
    let n = parts.iter().map(|g| g.ids.size()[1]).max().unwrap_or(0);
    // Pads dim 1 of each part to `len` (on the left or the right) with `value`, then stacks the rows.
    let cat = |f: &dyn Fn(&Generation) -> &Tensor, len: i64, left: bool, value: f64| -> Tensor {
        let padded: Vec<Tensor> = parts
            .iter()
            .map(|g| {
                let t = f(g);
                let mut shape = t.size();
                let missing = len - shape[1];
                if missing == 0 {
                    return t.shallow_clone();
                }
                shape[1] = missing;
                let fill = Tensor::full(shape.as_slice(), value, (t.kind(), t.device()));
                if left {
                    Tensor::cat(&[&fill, t], 1)
                } else {
                    Tensor::cat(&[t, &fill], 1)
                }
            })
            .collect();
        Tensor::cat(&padded, 0)
    };
    let pad = cfg.pad_id as f64;
    // Hidden states and the trunk span prompt + response: pad both ends.
    let both = |f: &dyn Fn(&Generation) -> Option<&Tensor>| -> Option<Tensor> {
        let ts: Option<Vec<Tensor>> = parts
            .iter()
            .map(|g| {
                let t = f(g)?;
                let (gp, gn) = (g.prompt_ids.size()[1], g.ids.size()[1]);
                Some(t.constant_pad_nd([0, 0, p - gp, n - gn]))
            })
            .collect();
        ts.map(|v| Tensor::cat(&v, 0))
    };
    Ok(Generation {
        prompt_ids: cat(&|g| &g.prompt_ids, p, true, pad),
        prompt_mask: cat(&|g| &g.prompt_mask, p, true, 0.0),
        ids: cat(&|g| &g.ids, n, false, pad),
        logprobs: cat(&|g| &g.logprobs, n, false, 0.0),
        mask: cat(&|g| &g.mask, n, false, 0.0),
        hidden: both(&|g| g.hidden.as_ref()),
        trunk: both(&|g| g.trunk.as_ref()),
        entropy: cat(&|g| &g.entropy, n, false, 0.0),
    })
}

/// `generate`, calling `on_step(step, tokens (B))` with each step's tokens (pad for ended rows) as
/// they are picked, for streaming to a terminal.
pub fn generate_stream(
    model: &CausalLm,
    prompts: &[Vec<i64>],
    cfg: &GenerateConfig,
    on_step: &mut dyn FnMut(i64, &Tensor),
) -> Result<Generation> {
    let _guard = tch::no_grad_guard();
    if prompts.is_empty() {
        return Err(Error::Input("generate: no prompts".into()));
    }
    if cfg.max_new_tokens < 1 {
        return Err(Error::Input(format!("max_new_tokens = {} must be >= 1", cfg.max_new_tokens)));
    }
    let ctx = model.config.max_position_embeddings;
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Input(format!("prompt {i} is empty (0 tokens)")));
        }
        if p.len() as i64 + cfg.max_new_tokens > ctx {
            return Err(Error::Input(format!(
                "prompt {i} has {} tokens; with max_new_tokens = {} that exceeds the model's context of {ctx} tokens",
                p.len(),
                cfg.max_new_tokens
            )));
        }
    }
    let dev = model.device;
    tch::manual_seed(cfg.seed as i64);
    let (prompt_ids, prompt_mask) = left_pad(prompts, cfg.pad_id, dev);
    let (b, p) = prompt_ids.size2()?;
    let n = cfg.max_new_tokens;
    let c = &model.config;
    let extra = i64::from(cfg.return_hidden || cfg.return_trunk.is_some());
    let capture = cfg.return_trunk.map(|k| k.min(c.num_hidden_layers as usize));
    // bf16: autocast for the whole call, bf16 copies of the weights made once, a bf16 KV cache.
    let _ac = model.autocast();
    let kind = model.precision.autocast_kind().unwrap_or_else(|| model.head_weight().kind());
    let mut cache = KvCache::new(c.num_hidden_layers, b, c.n_kv_heads(), p + n + extra, c.head_dim(), kind, dev);
    // Every decode step multiplies each weight by a (B, D) input: pack the weights once for B rows
    // (f32), or cast them once (bf16).
    let mkl = packed::How::Mkl { rows: b };
    let _packs = match (model.precision.autocast_kind(), cfg.pack_weights) {
        (Some(k), _) => Some(packed::install(&model.linear_weights(), packed::How::Cast(k), Some(&model.packs)).map_err(Error::Input)?),
        (None, Some(false)) => None,
        (None, Some(true)) => Some(
            packed::install(&model.linear_weights(), mkl, Some(&model.packs))
                .map_err(|e| Error::Input(format!("generate: pack_weights = true, but {e}")))?,
        ),
        (None, None) => {
            let weights = model.linear_weights();
            let f32_cpu = cfg.cpu_kernels && dev == Device::Cpu && kind == Kind::Float;
            if b == 1 && f32_cpu && crate::ffi::matvec_preferred() {
                Some(packed::install(&weights, packed::How::Matvec, Some(&model.packs)).map_err(Error::Input)?)
            } else if !packed::pays(dev, kind, b, &weights) {
                None
            } else if f32_cpu && crate::ffi::gemm_preferred() {
                Some(packed::install(&weights, packed::How::Gemm { rows: b }, Some(&model.packs)).map_err(Error::Input)?)
            } else {
                packed::install(&weights, mkl, Some(&model.packs)).ok()
            }
        }
    };

    // r2m's CPU kernels inside the model (f32 on the CPU): attention over the cache, norms, RoPE, SiLU.
    let _kernels = KernelScope::new(cfg.cpu_kernels && dev == Device::Cpu && kind == Kind::Float);
    // Slot validity over the whole cache (B, S_max): prompt mask, then 1 for every generated slot.
    let slot_valid = Tensor::ones([b, p + n + extra], (Kind::Bool, dev));
    slot_valid.narrow(1, 0, p).copy_(&prompt_mask.to_kind(Kind::Bool));

    // Prefill.
    let h = model.model.forward(
        &prompt_ids,
        &positions_from_mask(&prompt_mask),
        &model.model.masks(&prompt_mask),
        Some(&mut cache),
        capture.is_some(),
    );
    let mut hidden = if cfg.return_hidden { vec![h.last.shallow_clone()] } else { vec![] };
    // `all` holds the input of every block (then the final states): entry k is the trunk's output.
    let trunk_of = |h: &crate::model::decoder::Hidden| capture.and_then(|k| h.all.as_ref().map(|a| a[k].shallow_clone()));
    let mut trunk: Vec<Tensor> = trunk_of(&h).into_iter().collect();
    let mut logits = {
        let _s = span("LM head");
        model.logits(&h.last.narrow(1, p - 1, 1)).squeeze_dim(1) // (B, V)
    };
    let mut pos = prompt_mask.sum_dim_intlist([1i64].as_slice(), true, Kind::Int64) - 1; // (B, 1): last position
    let eos = Tensor::from_slice(&cfg.eos_ids).to_device(dev);
    let mut finished = Tensor::zeros([b], (Kind::Bool, dev));
    let (mut toks, mut lps, mut masks, mut ents) = (vec![], vec![], vec![], vec![]);
    let keep_going = cfg.return_hidden || capture.is_some();
    let longrope_switch = match &c.layout.rope.scaling {
        Some(crate::model::arch::RopeScaling::LongRope { original_max_position_embeddings, .. })
            if p <= *original_max_position_embeddings =>
        {
            Some(*original_max_position_embeddings)
        }
        _ => None,
    };
    for step in 0..n {
        let sampling = span("sampling and bookkeeping");
        let (tok, lp, ent) = pick(&logits, &cfg.sampling, cfg.cpu_kernels);
        let alive = finished.logical_not();
        let tok = tok.where_self(&alive, &Tensor::from(cfg.pad_id).to_device(dev));
        on_step(step, &tok);
        toks.push(tok.shallow_clone());
        lps.push(&lp * alive.to_kind(lp.kind()));
        ents.push(&ent * alive.to_kind(ent.kind()));
        masks.push(alive.to_kind(Kind::Int64));
        if !cfg.eos_ids.is_empty() {
            finished = finished.logical_or(&tok.unsqueeze(-1).eq_tensor(&eos.unsqueeze(0)).any_dim(-1, false));
        }
        let last = step + 1 == n;
        let check = (step + 1) % cfg.stop_check_every.max(1) == 0;
        let done = (last || check) && finished.all().int64_value(&[]) == 1;
        drop(sampling);
        if (last || done) && !keep_going {
            break;
        }
        // Feed the token: one new slot per row.
        pos += 1;
        let s = cache.len;
        let h = if longrope_switch == Some(s) {
            // LongRoPE: the sequence reaches the original context, and its frequencies change.
            // transformers' Phi-3 then drops the cache and runs the whole sequence again, so that
            // every cached key uses the new ones; so does this. The new token's states are kept.
            let seq = Tensor::cat(&[prompt_ids.shallow_clone(), Tensor::stack(&toks, 1)], 1);
            let seq_mask = slot_valid.narrow(1, 0, s + 1).to_kind(Kind::Int64);
            cache.len = 0;
            let full = model.model.forward(
                &seq,
                &positions_from_mask(&seq_mask),
                &model.model.masks(&seq_mask),
                Some(&mut cache),
                capture.is_some(),
            );
            crate::model::decoder::Hidden {
                last: full.last.narrow(1, s, 1),
                all: full.all.map(|a| a.iter().map(|t| t.narrow(1, s, 1)).collect()),
            }
        } else {
            let step_masks = span("step masks");
            let masks = Masks::for_step(&slot_valid.narrow(1, 0, s + 1), model.model.window); // (B, 1, 1, S)
            drop(step_masks);
            model.model.forward(&tok.unsqueeze(-1), &pos, &masks, Some(&mut cache), capture.is_some())
        };
        if cfg.return_hidden {
            hidden.push(h.last.shallow_clone());
        }
        trunk.extend(trunk_of(&h));
        if last || done {
            break;
        }
        let _s = span("LM head");
        logits = model.logits(&h.last).squeeze_dim(1);
    }
    Ok(Generation {
        ids: Tensor::stack(&toks, 1),
        logprobs: Tensor::stack(&lps, 1),
        mask: Tensor::stack(&masks, 1),
        hidden: if cfg.return_hidden { Some(Tensor::cat(&hidden, 1)) } else { None },
        trunk: if capture.is_some() { Some(Tensor::cat(&trunk, 1)) } else { None },
        entropy: Tensor::stack(&ents, 1),
        prompt_ids,
        prompt_mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probs 0.5, 0.3, 0.2: p = 0.6 keeps the first two; p = 0.5 only the first.
        let logits = Tensor::from_slice(&[0.5f32, 0.3, 0.2]).log().view([1, 3]);
        tch::manual_seed(0);
        for _ in 0..50 {
            let s = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.6) };
            let (t, _, _) = pick(&logits, &s, true);
            assert!(t.int64_value(&[0]) < 2);
            let s = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.5) };
            assert_eq!(pick(&logits, &s, true).0.int64_value(&[0]), 0);
            let s = Sampling::Sample { temperature: 1.0, top_k: Some(1), top_p: None };
            assert_eq!(pick(&logits, &s, true).0.int64_value(&[0]), 0);
        }
        // The reported log-prob is the untruncated one.
        let (_, lp, _) = pick(&logits, &Sampling::Greedy, true);
        assert!((lp.double_value(&[0]) - 0.5f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn draw_follows_the_weights() {
        // 40000 rows of the same unnormalised weights (zero first, zero in the middle, zero last).
        let w = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.0, 7.0, 0.0]).view([1, 6]).repeat([40000, 1]);
        tch::manual_seed(3);
        let t = draw(&w);
        assert_eq!(t.size(), [40000]);
        let counts = Vec::<i64>::try_from(t.bincount(None::<Tensor>, 6)).unwrap();
        assert_eq!((counts[0], counts[3], counts[5]), (0, 0, 0), "zero-weight tokens drawn: {counts:?}");
        for (i, p) in [(1, 0.1), (2, 0.2), (4, 0.7)] {
            let f = counts[i] as f64 / 40000.0;
            // 5 standard errors of a binomial proportion
            assert!((f - p).abs() < 5.0 * (p * (1.0 - p) / 40000.0f64).sqrt(), "token {i}: {f} vs {p}");
        }
        // One-hot rows always give their token. (Same seed, same draws is checked through
        // `generate` in tests/it: here other tests share torch's generator.)
        let one = Tensor::eye(5, (Kind::Float, Device::Cpu));
        assert_eq!(Vec::<i64>::try_from(draw(&one)).unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn bad_sampling_args() {
        assert!(Sampling::from_args(-1.0, None, None).is_err());
        assert!(Sampling::from_args(1.0, None, Some(0.0)).is_err());
        assert!(Sampling::from_args(1.0, Some(0), None).is_err());
        assert_eq!(Sampling::from_args(0.0, None, None).unwrap(), Sampling::Greedy);
    }
}
