//! Memory budgets of an RL run, chosen from the device's free memory (GPU memory on CUDA,
//! MemAvailable on the CPU): how many rows one `generate` call decodes (`rl.generation_batch`)
//! and how many sequences one backward pass takes (`rl.grad_accum`). Both accept "auto" or a
//! number; a number that cannot fit is an error before the run starts, naming the field, the
//! estimate and what to change (instead of an out-of-memory crash some minutes in).
//!
//! The estimates count the tensors that dominate, per the model's config (bytes):
//! - weights: the policy, the reference (its own copy), gradients and AdamW's two moments for the
//!   trained tensors, decoding's weight copies (MKL-packed f32 on the CPU, bf16 under autocast, none for f32 on
//!   CUDA);
//! - decoding R rows: the KV cache (2 L R kv_heads (P + N) head_dim), the logits of the prefill's
//!   last position and of each step with the sampler's temporaries (R V, x 3), the prefill's
//!   widest activation (R P (F + 3 D)) and its attention scores (R heads P^2) off CUDA;
//! - training one sequence of S = P + N tokens through the trained blocks: the activations
//!   autograd keeps per block (~10 D + 3 kv + 4 F values a token, plus heads S^2 attention
//!   probabilities off CUDA, where SDPA's math kernel keeps them) or, with activation
//!   checkpointing, one hidden state a block and one block's activations at a time; plus the LM
//!   head's logits over the N response tokens with their log-softmax and gradient (N V, x 3).
//!
//! The estimates are for the worst case (the longest prompt, every response at max_new_tokens), so
//! "auto" stays on the safe side; they are not exact (allocator slack, the reward models).
use crate::model::config::DecoderConfig;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::Device;

const GIB: f64 = (1u64 << 30) as f64;

/// A size that is either chosen from free memory ("auto") or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CountRepr", into = "CountRepr")]
pub enum Count {
    Auto,
    Fixed(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CountRepr {
    N(usize),
    S(String),
}

impl TryFrom<CountRepr> for Count {
    type Error = String;
    fn try_from(r: CountRepr) -> std::result::Result<Self, String> {
        match r {
            CountRepr::N(n) => Ok(Count::Fixed(n)),
            CountRepr::S(s) if s == "auto" => Ok(Count::Auto),
            CountRepr::S(s) => Err(format!("expected \"auto\" or a number, found \"{s}\"")),
        }
    }
}

impl From<Count> for CountRepr {
    fn from(c: Count) -> Self {
        match c {
            Count::Auto => CountRepr::S("auto".into()),
            Count::Fixed(n) => CountRepr::N(n),
        }
    }
}

/// The shapes an RL run trains and decodes, as the estimates need them.
#[derive(Debug, Clone)]
pub struct Shapes {
    /// The policy's config.
    pub model: DecoderConfig,
    /// Longest prompt (P) and most new tokens (N).
    pub prompt_tokens: i64,
    pub new_tokens: i64,
    /// Blocks that train (from the top), and trained tensors' elements in all.
    pub trained_blocks: i64,
    pub trained_params: i64,
    /// Bytes of one activation value: 4 in f32, ~3 under bf16 autocast (bf16 matmul outputs, f32
    /// residual stream and norms).
    pub act_bytes: i64,
    pub checkpointing: bool,
    /// CUDA's SDPA kernels keep no S x S attention matrix; the CPU's math path does.
    pub cuda: bool,
}

impl Shapes {
    fn kv_dim(&self) -> i64 {
        self.model.n_kv_heads() * self.model.head_dim()
    }

    /// Elements of the policy's weights.
    pub fn params(&self) -> i64 {
        let c = &self.model;
        let (d, f, q, kv) = (c.hidden_size, c.intermediate_size, c.num_attention_heads * c.head_dim(), self.kv_dim());
        let block = d * q * 2 + d * kv * 2 + 3 * d * f + 2 * d;
        let embed = c.vocab_size * d * if c.tie_word_embeddings { 1 } else { 2 };
        embed + c.num_hidden_layers * block + d
    }

    /// Weights, gradients, optimizer state and decoding's weight copies, in bytes.
    pub fn fixed_bytes(&self) -> f64 {
        let p = self.params() as f64;
        // bf16 copies under autocast; MKL-packed f32 copies on the CPU; none for f32 on CUDA.
        let copies = if self.act_bytes < 4 {
            2.0 * p
        } else if self.cuda {
            0.0
        } else {
            4.0 * p
        };
        4.0 * p * 2.0 + 12.0 * self.trained_params as f64 + copies
    }

    /// One `generate` call over `rows` rows.
    pub fn generate_bytes(&self, rows: usize) -> f64 {
        let c = &self.model;
        let (r, p, n) = (rows as f64, self.prompt_tokens as f64, self.new_tokens as f64);
        let kv_bytes = if self.act_bytes < 4 { 2.0 } else { 4.0 };
        let kv = 2.0 * c.num_hidden_layers as f64 * r * self.kv_dim() as f64 * (p + n) * kv_bytes;
        let logits = 3.0 * r * c.vocab_size as f64 * 4.0;
        let prefill = r * p * (c.intermediate_size + 3 * c.hidden_size) as f64 * self.act_bytes as f64;
        let scores = if self.cuda { 0.0 } else { r * c.num_attention_heads as f64 * p * p * 4.0 };
        // Hidden states returned for the reward model / the trainer (prompt + response, f32).
        let hidden = 2.0 * r * (p + n) * c.hidden_size as f64 * 4.0;
        kv + logits + prefill + scores + hidden
    }

    /// One backward pass over `seqs` sequences.
    pub fn train_bytes(&self, seqs: usize) -> f64 {
        let c = &self.model;
        let s = (self.prompt_tokens + self.new_tokens) as f64;
        let (d, f) = (c.hidden_size as f64, c.intermediate_size as f64);
        let a = self.act_bytes as f64;
        let per_block = s * (10.0 * d + 3.0 * self.kv_dim() as f64 + 4.0 * f) * a
            + if self.cuda { 0.0 } else { c.num_attention_heads as f64 * s * s * 4.0 };
        let blocks = self.trained_blocks as f64;
        let body = if self.checkpointing { blocks * s * d * 4.0 + per_block } else { blocks * per_block };
        let head = 3.0 * self.new_tokens as f64 * c.vocab_size as f64 * 4.0;
        seqs as f64 * (body + head)
    }
}

/// What a run decodes and trains at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Rows per `generate` call.
    pub generation_batch: usize,
    /// Micro-batches per optimiser step (sequences per backward pass = minibatch / grad_accum).
    pub grad_accum: usize,
}

/// Chooses (or checks) the budgets against `free` bytes. `rows`: the rows a rollout decodes
/// (n x K; evaluation decodes at most as many per call); `minibatch`: sequences per optimiser
/// step. `where_` names the device for the messages.
pub fn choose(
    shapes: &Shapes,
    free: f64,
    rows: usize,
    minibatch: usize,
    generation: Count,
    grad_accum: Count,
    where_: &str,
) -> Result<Budget> {
    // Headroom for what the estimates leave out (the reward models, allocator slack).
    let usable = free * 0.8 - shapes.fixed_bytes();
    let gib = |b: f64| b / GIB;
    if usable <= 0.0 {
        bail!(
            "the policy, its reference and optimizer state need about {:.1} GiB, more than {where_} has free ({:.1} GiB): \
             train fewer layers (policy.trainable) or use a smaller model",
            gib(shapes.fixed_bytes()),
            gib(free)
        );
    }
    let generation_batch = match generation {
        Count::Fixed(r) => {
            let need = shapes.generate_bytes(r);
            if need > usable {
                bail!(
                    "rl.generation_batch = {r}: decoding {r} rows of {} + {} tokens needs about {:.1} GiB, {where_} has {:.1} GiB free \
                     after the weights: set rl.generation_batch = \"auto\" or a smaller number, or lower rl.max_new_tokens",
                    shapes.prompt_tokens,
                    shapes.new_tokens,
                    gib(need),
                    gib(usable)
                );
            }
            r
        }
        Count::Auto => {
            if shapes.generate_bytes(1) > usable {
                bail!(
                    "rl.generation_batch: decoding even one row of {} + {} tokens needs about {:.1} GiB, {where_} has {:.1} GiB free \
                     after the weights: lower rl.max_new_tokens or rl.max_prompt_tokens",
                    shapes.prompt_tokens,
                    shapes.new_tokens,
                    gib(shapes.generate_bytes(1)),
                    gib(usable)
                );
            }
            // The largest row count that fits, by bisection (the estimate grows with rows).
            let (mut lo, mut hi) = (1usize, rows.max(1));
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if shapes.generate_bytes(mid) <= usable {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            lo
        }
    };
    let grad_accum = match grad_accum {
        Count::Fixed(g) => {
            let micro = minibatch / g.max(1);
            let need = shapes.train_bytes(micro);
            if need > usable {
                let hint = if shapes.checkpointing { "" } else { ", or policy.gradient_checkpointing = true" };
                bail!(
                    "rl.grad_accum = {g}: a backward pass over {micro} sequences of up to {} tokens needs about {:.1} GiB, {where_} has \
                     {:.1} GiB free after the weights: set rl.grad_accum = \"auto\" or a larger divisor of rl.minibatch = {minibatch}{hint}",
                    shapes.prompt_tokens + shapes.new_tokens,
                    gib(need),
                    gib(usable)
                );
            }
            g
        }
        Count::Auto => {
            // The fewest micro-batches (largest that fits) among the divisors of the minibatch.
            match (1..=minibatch).filter(|g| minibatch.is_multiple_of(*g)).find(|g| shapes.train_bytes(minibatch / g) <= usable) {
                Some(g) => g,
                None => {
                    let hint = if shapes.checkpointing { "" } else { "policy.gradient_checkpointing = true, " };
                    bail!(
                        "rl.grad_accum: even one sequence of up to {} tokens needs about {:.1} GiB for a backward pass, {where_} has \
                         {:.1} GiB free after the weights: set {hint}lower rl.max_new_tokens or train fewer layers",
                        shapes.prompt_tokens + shapes.new_tokens,
                        gib(shapes.train_bytes(1)),
                        gib(usable)
                    )
                }
            }
        }
    };
    Ok(Budget { generation_batch, grad_accum })
}

/// Free memory on `device` in bytes: the GPU's free memory (CUDA runtime's `cudaMemGetInfo`,
/// through the libcudart that libtorch_cuda loaded), or MemAvailable on the CPU. None when the
/// platform does not say.
pub fn free_memory(device: Device) -> Option<f64> {
    match device {
        Device::Cpu => crate::device::available_host_memory().map(|b| b as f64),
        Device::Cuda(i) => crate::device::cuda_free_memory(i).map(|(free, _)| free as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> DecoderConfig {
        serde_json::from_str(
            r#"{"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": true}"#,
        )
        .unwrap()
    }

    fn shapes(cuda: bool, checkpointing: bool) -> Shapes {
        Shapes {
            model: smollm2(),
            prompt_tokens: 256,
            new_tokens: 64,
            trained_blocks: 4,
            trained_params: 4 * 3_540_000,
            act_bytes: 4,
            checkpointing,
            cuda,
        }
    }

    #[test]
    fn smollm2_weights_are_counted_right() {
        // SmolLM2-135M: 134,515,008 parameters (HF model card; tied embeddings).
        let p = shapes(false, false).params();
        assert!((p - 134_515_008).abs() < 10_000, "{p}");
    }

    #[test]
    fn auto_takes_the_largest_that_fits_and_fixed_is_checked() {
        let s = shapes(true, false);
        let gib = GIB;
        // Ample memory: everything at once.
        let b = choose(&s, 80.0 * gib, 64, 16, Count::Auto, Count::Auto, "cuda:0").unwrap();
        assert_eq!(b, Budget { generation_batch: 64, grad_accum: 1 });
        // Tight memory: fewer rows per call, more micro-batches; what is chosen fits, one more does not.
        let free = s.fixed_bytes() / 0.8 + 0.7 * gib / 0.8;
        let b = choose(&s, free, 64, 16, Count::Auto, Count::Auto, "cuda:0").unwrap();
        let usable = free * 0.8 - s.fixed_bytes();
        assert!(b.generation_batch < 64 && s.generate_bytes(b.generation_batch) <= usable);
        assert!(s.generate_bytes(b.generation_batch + 1) > usable);
        assert!(b.grad_accum > 1 && 16 % b.grad_accum == 0 && s.train_bytes(16 / b.grad_accum) <= usable);
        // A fixed size that does not fit names its field and the way out.
        let e = choose(&s, free, 64, 16, Count::Fixed(64), Count::Auto, "cuda:0").unwrap_err().to_string();
        assert!(e.contains("rl.generation_batch = 64") && e.contains("\"auto\""), "{e}");
        let e = choose(&s, free, 64, 16, Count::Auto, Count::Fixed(1), "cuda:0").unwrap_err().to_string();
        assert!(e.contains("rl.grad_accum = 1") && e.contains("gradient_checkpointing"), "{e}");
        // Checkpointing needs less (the LM head's logits remain), so larger micro-batches fit.
        let c = shapes(true, true);
        assert!(c.train_bytes(16) < s.train_bytes(16) * 0.7);
        let bc = choose(&c, free, 64, 16, Count::Auto, Count::Auto, "cuda:0").unwrap();
        assert!(bc.grad_accum < b.grad_accum, "{bc:?} vs {b:?}");
        // Not even the weights: a clear error.
        let e = choose(&s, gib, 64, 16, Count::Auto, Count::Auto, "cuda:0").unwrap_err().to_string();
        assert!(e.contains("more than cuda:0 has free"), "{e}");
    }

    #[test]
    fn counts_read_auto_or_a_number() {
        #[derive(Deserialize, Serialize)]
        struct T {
            a: Count,
            b: Count,
        }
        let t: T = toml::from_str("a = \"auto\"\nb = 4").unwrap();
        assert_eq!((t.a, t.b), (Count::Auto, Count::Fixed(4)));
        assert_eq!(toml::to_string(&t).unwrap(), "a = \"auto\"\nb = 4\n");
        let e = toml::from_str::<T>("a = \"many\"\nb = 1").err().unwrap().to_string();
        assert!(e.contains("\"auto\" or a number"), "{e}");
    }
}
