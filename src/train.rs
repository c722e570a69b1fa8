//! Training primitives: AdamW (PyTorch's formula, decoupled weight decay), global grad-norm
//! clipping, the LR schedule as a pure function of the step, and choosing what trains.
use crate::error::{Error, Result};
use crate::model::llama::CausalLm;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// AdamW hyper-parameters. Defaults: torch.optim.AdamW's, except weight_decay 0.0 (TRL's default
/// for RL and RM training; PyTorch's is 0.01).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed, ordered list of parameters. Its state (step, moments) is plain tensors, so
/// checkpoints save and restore it exactly.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: Vec<(String, Tensor)>,
    /// Parameters with no weight decay (biases, norms: TRL/HF's `get_decay_parameter_names`).
    no_decay: Vec<bool>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    pub step: i64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        let no_decay = params.iter().map(|(n, t)| t.dim() < 2 || n.contains("norm")).collect();
        let exp_avg = params.iter().map(|(_, t)| t.zeros_like().detach()).collect();
        let exp_avg_sq = params.iter().map(|(_, t)| t.zeros_like().detach()).collect();
        AdamW { cfg, params, no_decay, exp_avg, exp_avg_sq, step: 0 }
    }

    /// One update at learning rate `lr` (from the schedule). Parameters without a gradient are
    /// skipped, as in PyTorch.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            if c.weight_decay != 0.0 && !self.no_decay[i] {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            // torch.optim.adamw (single-tensor): m.lerp_(g, 1 - b1); v = b2 v + (1 - b2) g^2;
            // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
            let _ = self.exp_avg[i].lerp_(&g, 1.0 - c.beta1);
            let _ = self.exp_avg_sq[i].g_mul_scalar_(c.beta2);
            let _ = self.exp_avg_sq[i].addcmul_(&g, &g.g_mul_scalar(1.0 - c.beta2));
            let denom = (self.exp_avg_sq[i].sqrt() / bc2.sqrt()) + c.eps;
            let _ = p.addcdiv_(&(&self.exp_avg[i] * (-lr / bc1)), &denom);
        }
    }

    pub fn zero_grad(&self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The optimiser state as named tensors (for checkpoints): `{name}.exp_avg`, `{name}.exp_avg_sq`, `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("{n}.exp_avg"), self.exp_avg[i].shallow_clone()));
            out.push((format!("{n}.exp_avg_sq"), self.exp_avg_sq[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let find = |k: &str| {
            state.iter().find(|(n, _)| n == k).map(|(_, t)| t.shallow_clone()).ok_or_else(|| Error::MissingTensors {
                path: source.into(),
                names: k.to_string(),
            })
        };
        self.step = find("step")?.int64_value(&[]);
        for (i, (n, _)) in self.params.iter().enumerate() {
            self.exp_avg[i].copy_(&find(&format!("{n}.exp_avg"))?);
            self.exp_avg_sq[i].copy_(&find(&format!("{n}.exp_avg_sq"))?);
        }
        Ok(())
    }
}

/// Scales gradients so that their global L2 norm is at most `max_norm` (torch's
/// `clip_grad_norm_`, with its 1e-6); returns the norm before clipping, as a 0-dim tensor (no
/// host sync). A non-finite norm is left for the caller to check.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
    if grads.is_empty() {
        return Tensor::from(0.0f32);
    }
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float).norm()).collect();
    let total = Tensor::stack(&norms, 0).norm();
    let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
    for g in &grads {
        let mut g = g.shallow_clone();
        let _ = g.g_mul_(&coef.to_kind(g.kind()));
    }
    total
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Linear warmup, then cosine decay to `min_lr_ratio * lr` at `total_steps`
    /// (transformers' get_cosine_schedule_with_warmup when min_lr_ratio = 0).
    Cosine,
    Linear,
}

/// The LR at optimiser step `step` (0-based): a pure function of the step.
pub fn lr_at(step: i64, base: f64, warmup: i64, total: i64, schedule: Schedule, min_lr_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    let factor = match schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Linear => 1.0 - progress,
    };
    base * (min_lr_ratio + (1.0 - min_lr_ratio) * factor)
}

/// What trains in a causal LM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Trainable {
    /// Every parameter.
    All,
    /// The top `layers` blocks and the final norm; the LM head too when `head` (with tied
    /// embeddings the head IS the embedding matrix, so `head` then trains the embeddings).
    Top { layers: usize, head: bool },
    /// LoRA adapters of rank `rank` (scale alpha / rank) on the named projections of every block
    /// (e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); the base is frozen.
    Lora { rank: i64, alpha: f64, targets: Vec<String> },
}

impl Default for Trainable {
    fn default() -> Self {
        Trainable::All
    }
}

/// Applies `t` to `model`: sets requires_grad, adds LoRA adapters (seeded by `seed`). Returns the
/// trainable parameters in a fixed order (for the optimiser).
pub fn apply_trainable(model: &mut CausalLm, t: &Trainable, seed: i64) -> Result<Vec<(String, Tensor)>> {
    let n_layers = model.model.layers.len();
    match t {
        Trainable::All => model.params.set_trainable(|_| true),
        Trainable::Top { layers, head } => {
            if *layers > n_layers {
                return Err(Error::Input(format!("trainable.layers = {layers} but the model has {n_layers} layers")));
            }
            let first = n_layers - layers;
            let head_name = if model.lm_head.is_some() { "lm_head.weight" } else { "model.embed_tokens.weight" };
            model.params.set_trainable(|n| {
                n == "model.norm.weight"
                    || (*head && n == head_name)
                    || n.strip_prefix("model.layers.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| i >= first)
            });
        }
        Trainable::Lora { rank, alpha, targets } => {
            const KNOWN: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
            if let Some(bad) = targets.iter().find(|x| !KNOWN.contains(&x.as_str())) {
                return Err(Error::Input(format!("trainable.targets: unknown projection '{bad}' (known: {})", KNOWN.join(", "))));
            }
            if *rank < 1 {
                return Err(Error::Input(format!("trainable.rank = {rank} must be >= 1")));
            }
            model.params.freeze();
            tch::manual_seed(seed);
            let p = &mut model.params;
            for block in model.model.layers.iter_mut() {
                let a = &mut block.self_attn;
                let m = &mut block.mlp;
                for (name, lin) in [
                    ("q_proj", &mut a.q_proj),
                    ("k_proj", &mut a.k_proj),
                    ("v_proj", &mut a.v_proj),
                    ("o_proj", &mut a.o_proj),
                    ("gate_proj", &mut m.gate_proj),
                    ("up_proj", &mut m.up_proj),
                    ("down_proj", &mut m.down_proj),
                ] {
                    if targets.iter().any(|x| x == name) && lin.lora.is_none() {
                        lin.add_lora(p, *rank, *alpha);
                    }
                }
            }
        }
    }
    Ok(model.params.trainable())
}

/// Fails on a non-finite value, naming what and where (e.g. "loss at step 12 (policy update)").
pub fn ensure_finite(v: f64, what: &str) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::Input(format!("{what} is {v}: stopping (the last checkpoint is kept)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn schedule_values() {
        let f = |s| lr_at(s, 1.0, 10, 110, Schedule::Cosine, 0.0);
        assert!((f(0) - 0.1).abs() < 1e-12);
        assert!((f(9) - 1.0).abs() < 1e-12);
        assert!((f(10) - 1.0).abs() < 1e-12);
        assert!((f(60) - 0.5).abs() < 1e-12);
        assert!(f(110).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 10, 110, Schedule::Linear, 0.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(110, 1.0, 0, 110, Schedule::Cosine, 0.1) - 0.1).abs() < 1e-12);
    }

    /// Two AdamW steps on fixed numbers, against torch.optim.AdamW(lr=0.1, weight_decay=0.1):
    /// p = [1, -2], grads [0.5, 0.25] then [-1, 2] (values printed by PyTorch 2.11).
    #[test]
    fn adamw_matches_torch() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).view([1, 2]).set_requires_grad(true);
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg);
        for g in [[0.5f32, 0.25], [-1.0, 2.0]] {
            opt.zero_grad();
            let loss = (&p * Tensor::from_slice(&g).view([1, 2])).sum(Kind::Float);
            loss.backward();
            opt.step(0.1);
        }
        let got = Vec::<f32>::try_from(p.detach().view([-1])).unwrap();
        let want = [0.9177104234695435f32, -2.1413466930389404];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clip_scales_to_max_norm() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float).backward();
        let params = vec![("p".to_string(), p.shallow_clone())];
        let n = clip_grad_norm(&params, 1.0).double_value(&[]);
        assert!((n - 5.0).abs() < 1e-6);
        let g = Vec::<f32>::try_from(p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn non_finite_is_an_error_naming_it() {
        let e = ensure_finite(f64::NAN, "loss at step 3 (policy update)").unwrap_err().to_string();
        assert!(e.contains("loss at step 3 (policy update)") && e.contains("NaN"), "{e}");
    }
}
