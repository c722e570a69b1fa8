//! The limit of the machine the bench runs on, measured with the bench's own thread count:
//! sustained GEMM throughput (f32, and bf16 where the CPU has bf16 instructions) and memory read
//! bandwidth, plus what libtorch sees of the CPU. Workloads are then reported as a fraction of it:
//! generation at batch B as achieved FLOP/s over the f32 GEMM peak, batch 1 as the time to read
//! every weight once per token at the measured bandwidth over the time taken.
use anyhow::Result;
use r2m::model::causal_lm::CausalLm;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct Roofline {
    pub cpu: String,
    /// ATen's CPU dispatch level ("AVX512", "AVX2", ...).
    pub aten_level: String,
    /// The instruction-set features that decide which kernels are fast: AVX2, AVX-512 (and its
    /// bf16/VNNI parts), AMX.
    pub features: Vec<String>,
    /// Best sustained f32 GEMM throughput, GFLOP/s, and the GEMM shape that gave it.
    pub f32_gflops: f64,
    pub f32_shape: [i64; 3],
    /// The same in bf16, where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX).
    pub bf16_gflops: Option<f64>,
    /// Read bandwidth over a buffer far larger than the caches, GB/s.
    pub read_gbs: f64,
    pub threads: i32,
}

const SHOWN: [&str; 10] =
    ["avx2", "fma3", "avx512_f", "avx512_bw", "avx512_vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"];

/// Median seconds of `reps` calls of `f` after one warmup.
fn secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gemm_gflops(m: i64, n: i64, k: i64, kind: Kind) -> f64 {
    let _g = tch::no_grad_guard();
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu)).to_kind(kind);
    let b = Tensor::randn([n, k], (Kind::Float, Device::Cpu)).to_kind(kind);
    let s = secs(5, || {
        let _ = a.linear::<Tensor>(&b, None);
    });
    2.0 * (m * n * k) as f64 / s / 1e9
}

/// Measures this machine (CPU): about 10 s.
pub fn measure() -> Result<Roofline> {
    let (aten_level, all) = r2m::ffi::cpu_isa().map_err(anyhow::Error::msg)?;
    let features: Vec<String> = SHOWN.iter().filter(|f| all.iter().any(|a| a == *f)).map(|f| f.to_string()).collect();
    // Square GEMMs large enough to run at the kernels' peak, in the layout linear layers use.
    let mut best = (0.0, [0; 3]);
    for s in [1024, 2048, 3072] {
        let g = gemm_gflops(s, s, s, Kind::Float);
        if g > best.0 {
            best = (g, [s, s, s]);
        }
    }
    let has_bf16 = features.iter().any(|f| f == "avx512_bf16" || f == "amx_bf16");
    let bf16_gflops = has_bf16.then(|| [2048, 3072].iter().map(|&s| gemm_gflops(s, s, s, Kind::BFloat16)).fold(0.0, f64::max));
    // Read bandwidth: a sum over 1 GiB of written (so really mapped) f32.
    let buf = Tensor::ones([1 << 28], (Kind::Float, Device::Cpu));
    let s = secs(5, || {
        let _ = buf.sum(Kind::Float);
    });
    let read_gbs = (1u64 << 30) as f64 / s / 1e9;
    Ok(Roofline {
        cpu: super::cpu_model(),
        aten_level,
        features,
        f32_gflops: best.0,
        f32_shape: best.1,
        bf16_gflops,
        read_gbs,
        threads: tch::get_num_threads(),
    })
}

impl Roofline {
    pub fn describe(&self) -> String {
        format!(
            "{}, {} threads: ATen {}, {}{}{}; {}; f32 GEMM {:.0} GFLOP/s ({}^3){}; memory read {:.1} GB/s",
            self.cpu,
            self.threads,
            self.aten_level,
            if self.features.is_empty() { "no AVX2".to_string() } else { self.features.join(" ") },
            if r2m::ffi::mkl_vendor_overridden() { "; MKL's vendor check answered by r2m" } else { "" },
            if r2m::ffi::matvec_preferred() { "; batch-1 products by r2m's matvec kernel" } else { "" },
            r2m::malloc::describe(),
            self.f32_gflops,
            self.f32_shape[0],
            self.bf16_gflops.map(|g| format!("; bf16 GEMM {g:.0} GFLOP/s")).unwrap_or_default(),
            self.read_gbs
        )
    }
}

/// The arithmetic and the weight traffic of a `generate` call, counted from the model's shapes.
pub struct GenWork {
    /// Multiply-adds x 2 of every matmul (projections, LM head, attention scores and values).
    pub flops: f64,
    /// Bytes of weights read by the decode steps if each step reads every weight once.
    pub weight_bytes_per_step: f64,
}

/// Weights the blocks' projections hold, and the LM head's (vocab x hidden, tied or not).
fn weight_counts(m: &CausalLm) -> (i64, i64) {
    let block: i64 = m.model.layers.iter().flat_map(|l| l.linears()).map(|l| l.weight.numel() as i64).sum();
    (block, m.config.vocab_size * m.config.hidden_size)
}

/// `b` prompts of `p` tokens (padded length), `n` new tokens, no early stop: the prefill
/// (projections for all b x p tokens, the LM head for the last position only) and n - 1 decode
/// steps (the last token is sampled without a further forward).
pub fn gen_work(m: &CausalLm, b: i64, p: i64, n: i64) -> GenWork {
    let c = &m.config;
    let (block_weights, head) = weight_counts(m);
    let attn_width = c.num_attention_heads * c.head_dim();
    let layers = c.num_hidden_layers;
    // Attention: q.k and p.v, per query per layer 2 x 2 x heads x hd x (keys it sees); summed
    // over the queries, the keys seen are `ctx_sum`.
    let attn = |ctx_sum: i64| 4.0 * (attn_width * layers) as f64 * ctx_sum as f64;
    let prefill = 2.0 * (b * p * block_weights) as f64 + 2.0 * (b * head) as f64 + attn(b * p * (p + 1) / 2);
    let steps = (n - 1).max(0);
    let ctx_sum: i64 = (0..steps).map(|s| p + s + 1).sum();
    let decode = 2.0 * (b * steps) as f64 * (block_weights + head) as f64 + attn(b * ctx_sum);
    let elem = 4.0; // f32 weights
    GenWork { flops: prefill + decode, weight_bytes_per_step: (block_weights + head) as f64 * elem }
}

/// A training step on `b` x `t` tokens over all weights: forward (every position's logits) and a
/// backward of twice its arithmetic.
pub fn train_flops(m: &CausalLm, b: i64, t: i64) -> f64 {
    let c = &m.config;
    let (block_weights, head) = weight_counts(m);
    let attn = 4.0 * (c.num_attention_heads * c.head_dim() * c.num_hidden_layers) as f64 * (b * t * (t + 1) / 2) as f64;
    3.0 * (2.0 * (b * t) as f64 * (block_weights + head) as f64 + attn)
}
