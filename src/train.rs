//! Training primitives: AdamW (PyTorch's formula, decoupled weight decay), global grad-norm
//! clipping, the LR schedule as a pure function of the step, and choosing what trains.
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
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

impl AdamWConfig {
    /// libtorch's fused AdamW on parameters `p` (in place, with their gradients `g` and moments
    /// `m`, `v`) at step `step` (a 0-dim f32 on their device) and learning rate `lr`, with weight
    /// decay `wd`: every list of one device and dtype.
    pub fn fused_step(
        &self,
        p: &[Tensor],
        g: &[Tensor],
        m: &[Tensor],
        v: &[Tensor],
        step: &Tensor,
        lr: f64,
        wd: f64,
    ) -> std::result::Result<(), String> {
        let (p, g, m, v): (Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>, Vec<&Tensor>) =
            (p.iter().collect(), g.iter().collect(), m.iter().collect(), v.iter().collect());
        let s: Vec<&Tensor> = vec![step; p.len()];
        crate::ffi::fused_adamw(&p, &g, &m, &v, &s, lr, self.beta1, self.beta2, wd, self.eps)
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed, ordered list of parameters. Its state (step, moments) is plain tensors, so
/// checkpoints save and restore it exactly.
///
/// The update is libtorch's fused multi-tensor kernel (`torch.optim.AdamW(fused=True)`: one pass
/// over parameter, gradient and both moments, on CPU and CUDA) rather than a chain of tensor ops
/// (torch's default single-tensor path: ~9 ops and 4 temporaries per parameter). Same formula;
/// `adamw_matches_torch` and `fused_adamw_matches_the_reference_ops` check it.
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
    /// skipped, as in PyTorch. Parameters are updated in groups of one device, dtype and
    /// weight-decay setting (what the fused kernel requires on CUDA).
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        if self.exp_avg.len() != self.params.len() {
            return Err(Error::Input(
                "AdamW: the moments are sharded over the ranks (ZeRO-1); the update goes through dist::zero::Zero1".into(),
            ));
        }
        self.step += 1;
        let c = self.cfg.clone();
        let mut groups: Vec<((tch::Device, Kind, bool), Vec<usize>)> = Vec::new();
        for (i, (_, p)) in self.params.iter().enumerate() {
            if !p.grad().defined() {
                continue;
            }
            let key = (p.device(), p.kind(), self.no_decay[i]);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ix)) => ix.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        for ((dev, _, no_decay), ix) in groups {
            let wd = if no_decay { 0.0 } else { c.weight_decay };
            // The kernel's per-parameter step counters (0-dim f32 on the parameters' device): all
            // equal to `step` here, so one tensor serves the whole group.
            let step = Tensor::from(self.step as f32).to_device(dev);
            let p: Vec<Tensor> = ix.iter().map(|&i| self.params[i].1.shallow_clone()).collect();
            let g: Vec<Tensor> = ix.iter().map(|&i| self.params[i].1.grad()).collect();
            let m: Vec<Tensor> = ix.iter().map(|&i| self.exp_avg[i].shallow_clone()).collect();
            let v: Vec<Tensor> = ix.iter().map(|&i| self.exp_avg_sq[i].shallow_clone()).collect();
            c.fused_step(&p, &g, &m, &v, &step, lr, wd).map_err(|e| {
                Error::Input(format!("AdamW step {} (fused kernel, {} parameters from {}): {e}", self.step, ix.len(), self.params[ix[0]].0))
            })?;
        }
        Ok(())
    }

    /// Whether parameter `i` has no weight decay.
    pub fn no_decay(&self, i: usize) -> bool {
        self.no_decay[i]
    }

    /// Gives up the whole moments (their shards then live in a
    /// [`Zero1`](crate::dist::zero::Zero1)); [`AdamW::step`], [`AdamW::state`] and
    /// [`AdamW::load_state`] refuse afterwards.
    pub fn release_moments(&mut self) {
        self.exp_avg = vec![];
        self.exp_avg_sq = vec![];
    }

    /// Whether the moments were handed to a sharded optimiser.
    pub fn moments_released(&self) -> bool {
        self.exp_avg.len() != self.params.len()
    }

    /// Drops the gradients (PyTorch's `zero_grad(set_to_none=True)`, its default): the next
    /// backward stores fresh gradient buffers instead of zero-filling and accumulating into old ones.
    pub fn zero_grad(&self) {
        let ts: Vec<&Tensor> = self.params.iter().map(|(_, p)| p).collect();
        crate::ffi::clear_grads(&ts).expect("clearing .grad of leaf tensors cannot fail");
    }

    /// The optimiser state as named tensors (for checkpoints): `{name}.exp_avg`, `{name}.exp_avg_sq`, `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        assert!(!self.moments_released(), "AdamW::state: the moments are sharded (ZeRO-1); Zero1::full_state gathers them");
        let mut out = vec![("step".to_string(), Tensor::from(self.step))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.push((format!("{n}.exp_avg"), self.exp_avg[i].shallow_clone()));
            out.push((format!("{n}.exp_avg_sq"), self.exp_avg_sq[i].shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, state: &[(String, Tensor)], source: &std::path::Path) -> Result<()> {
        let _guard = tch::no_grad_guard();
        if self.moments_released() {
            return Err(Error::Input(format!(
                "{}: AdamW's moments are sharded (ZeRO-1); Zero1::load_full_state loads them",
                source.display()
            )));
        }
        let find = |k: &str| {
            state
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| Error::MissingTensors { path: source.into(), names: k.to_string() })
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
    // Norms in f32 (torch's for f32 and bf16 gradients), in f64 for f64 gradients.
    let kind = if grads.iter().all(|g| g.kind() == Kind::Double) { Kind::Double } else { Kind::Float };
    let norms: Vec<Tensor> = grads.iter().map(|g| g.to_kind(kind).norm()).collect();
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Trainable {
    /// Every parameter.
    #[default]
    All,
    /// The top `layers` blocks and the final norm; the LM head too when `head` (with tied
    /// embeddings the head IS the embedding matrix, so `head` then trains the embeddings).
    Top { layers: usize, head: bool },
    /// LoRA adapters of rank `rank` (scale alpha / rank) on the named projections of every block
    /// (e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; Phi-3's fused
    /// qkv_proj and gate_up_proj; GPT-NeoX's qkv_proj, o_proj, up_proj, down_proj); the base is frozen.
    Lora { rank: i64, alpha: f64, targets: Vec<String> },
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
                n.starts_with("model.norm.")
                    || (*head && n == head_name)
                    || n.strip_prefix("model.layers.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|i| i.parse::<usize>().ok())
                        .is_some_and(|i| i >= first)
            });
        }
        Trainable::Lora { rank, alpha, targets } => {
            let present: std::collections::BTreeSet<String> =
                model.model.layers.iter().flat_map(|b| b.linears()).map(|l| l.kind().to_string()).collect();
            if let Some(bad) = targets.iter().find(|x| !present.contains(x.as_str())) {
                return Err(Error::Input(format!(
                    "trainable.targets: this model has no projection '{bad}' (its projections: {})",
                    present.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
            if *rank < 1 {
                return Err(Error::Input(format!("trainable.rank = {rank} must be >= 1")));
            }
            model.params.freeze();
            tch::manual_seed(seed);
            let p = &mut model.params;
            for block in model.model.layers.iter_mut() {
                for lin in block.linears_mut() {
                    if targets.iter().any(|x| x == lin.kind()) && lin.lora.is_none() {
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
            opt.step(0.1).unwrap();
        }
        let got = Vec::<f32>::try_from(p.detach().view([-1])).unwrap();
        let want = [0.917_710_4_f32, -2.141_346_7];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// The fused kernel against PyTorch's single-tensor AdamW written as tensor ops, on random
    /// tensors of several shapes (one without weight decay, one without a gradient), 3 steps.
    #[test]
    fn fused_adamw_matches_the_reference_ops() {
        tch::manual_seed(0);
        let shapes: [&[i64]; 4] = [&[7, 5], &[33], &[4, 3, 2], &[2, 2]];
        let names = ["w", "norm.weight", "w2", "unused"];
        let params: Vec<(String, Tensor)> = names
            .iter()
            .zip(shapes)
            .map(|(n, s)| (n.to_string(), Tensor::randn(s, (Kind::Float, Device::Cpu)).set_requires_grad(true)))
            .collect();
        let mut want: Vec<Tensor> = params.iter().map(|(_, p)| p.detach().copy()).collect();
        let mut m: Vec<Tensor> = want.iter().map(|t| t.zeros_like()).collect();
        let mut v: Vec<Tensor> = want.iter().map(|t| t.zeros_like()).collect();
        let cfg = AdamWConfig { lr: 0.01, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), cfg.clone());
        for step in 1..=3 {
            opt.zero_grad();
            let lr = 0.01 * step as f64;
            let mut grads = Vec::new();
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (i, (_, p)) in params.iter().enumerate().take(3) {
                let w = Tensor::randn(p.size(), (Kind::Float, Device::Cpu));
                loss = loss + (p * &w).sum(Kind::Float) + p.pow_tensor_scalar(2).sum(Kind::Float) * (i as f64 + 1.0);
                grads.push(&w + p.detach() * (2.0 * (i as f64 + 1.0)));
            }
            loss.backward();
            opt.step(lr).unwrap();
            let (bc1, bc2) = (1.0 - cfg.beta1.powi(step), 1.0 - cfg.beta2.powi(step));
            for (i, g) in grads.iter().enumerate() {
                let wd = if i == 1 { 0.0 } else { cfg.weight_decay };
                want[i] = &want[i] * (1.0 - lr * wd);
                m[i] = &m[i] * cfg.beta1 + g * (1.0 - cfg.beta1);
                v[i] = &v[i] * cfg.beta2 + g * g * (1.0 - cfg.beta2);
                let denom = v[i].sqrt() / bc2.sqrt() + cfg.eps;
                want[i] = &want[i] - &m[i] / denom * (lr / bc1);
            }
        }
        for (i, (n, p)) in params.iter().enumerate() {
            let diff = (p.detach() - &want[i]).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "{n}: max |fused - reference| = {diff}");
        }
        assert_eq!(opt.step, 3);
        // the parameter without a gradient is untouched, its moments still zero
        assert_eq!(opt.exp_avg[3].abs().sum(Kind::Float).double_value(&[]), 0.0);
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
