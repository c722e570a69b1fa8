//! The decoder against Python transformers: tiny random Llama/Qwen2 checkpoints written by
//! transformers, SmolLM2 from its GGUF; the generator/trainer log-prob invariant; export round trip;
//! bad input.
use crate::common::{python, tmpdir};
use r2m::model::causal_lm::CausalLm;
use r2m::model::generate::{generate, GenerateConfig, Sampling};
use r2m::model::load::{safetensors, ModelSource, WeightMap};
use r2m::model::params::Source;
use r2m::model::DecoderConfig;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Writes a tiny random HF checkpoint with `cfg_py` (a transformers config constructor call) into
/// `dir`, and the reference logits and final hidden states for a left-padded batch (positions =
/// cumsum(mask) - 1, as HF generate uses) into `dir/ref.safetensors`: in f32, and in f64
/// (`model.double()`) as `logits64` and `hidden64`. transformers' RMSNorm computes in f32 whatever
/// its input, so the f64 reference runs the same formula in f64 instead; the rotary tables stay
/// f32 in both.
fn write_tiny(dir: &Path, model_cls: &str, cfg_py: &str) {
    let script = format!(
        r#"
import sys, types, torch, transformers
from safetensors.torch import save_file
torch.manual_seed(0)
cfg = transformers.{cfg_py}
m = transformers.{model_cls}(cfg).eval()
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.2)
m.save_pretrained(sys.argv[1], safe_serialization=True)
ids = torch.tensor([[0, 0, 0, 5, 17, 99, 3, 44], [11, 12, 13, 14, 15, 16, 17, 18]])
mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
pos = (mask.cumsum(1) - 1).clamp(min=0)
with torch.no_grad():
    out = m(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    def rms_norm_f64(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))
    for mod in m.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            mod.forward = types.MethodType(rms_norm_f64, mod)
    out64 = m.double()(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
save_file({{"ids": ids, "mask": mask, "logits": out.logits.contiguous(),
           "hidden": out.hidden_states[-1].contiguous(), "logits64": out64.logits.contiguous(),
           "hidden64": out64.hidden_states[-1].contiguous()}}, sys.argv[1] + "/ref.safetensors")
"#
    );
    python(&script, &[dir.to_str().unwrap()]);
}

fn load_tiny(dir: &Path) -> CausalLm {
    let cfg = DecoderConfig::from_file(&dir.join("config.json")).unwrap();
    let w = WeightMap::new(dir, safetensors::read_dir(dir).unwrap());
    CausalLm::new(&cfg, Source::Load(w), Device::Cpu).unwrap()
}

fn reference(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    safetensors::read_file(&dir.join("ref.safetensors")).unwrap().into_iter().collect()
}

/// Max |a - b| over the positions where mask = 1.
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    ((a - b).abs() * m).max().double_value(&[])
}

/// The model's logits and final hidden states equal transformers' within 1e-4 in f32 and, with
/// the model in f64 (`Precision::F64`), within 1e-10 of transformers in f64.
fn check_parity(model_cls: &str, cfg_py: &str) {
    let d = tmpdir();
    write_tiny(d.path(), model_cls, cfg_py);
    let mut m = load_tiny(d.path());
    let r = reference(d.path());
    let _g = tch::no_grad_guard();
    let h = m.forward_hidden(&r["ids"], &r["mask"], false).unwrap();
    let logits = m.logits(&h.last);
    let dl = masked_max_diff(&logits, &r["logits"], &r["mask"]);
    let dh = masked_max_diff(&h.last, &r["hidden"], &r["mask"]);
    assert!(dl <= 1e-4 && dh <= 1e-4, "{model_cls}: logits diff {dl}, hidden diff {dh}");
    m.set_precision(r2m::model::precision::Precision::F64);
    let h = m.forward_hidden(&r["ids"], &r["mask"], false).unwrap();
    let logits = m.logits(&h.last);
    assert_eq!(logits.kind(), Kind::Double);
    let dl = masked_max_diff(&logits, &r["logits64"], &r["mask"]);
    let dh = masked_max_diff(&h.last, &r["hidden64"], &r["mask"]);
    assert!(dl <= 1e-10 && dh <= 1e-10, "{model_cls} in f64: logits diff {dl}, hidden diff {dh}");
}

#[test]
fn tiny_llama_matches_transformers() {
    // GQA, untied head, Llama 3 rope scaling, attention bias.
    check_parity(
        "LlamaForCausalLM",
        "LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, \
         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0, \
         rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, \
         original_max_position_embeddings=8), tie_word_embeddings=False, attention_bias=True)",
    );
}

#[test]
fn tiny_qwen2_matches_transformers() {
    // q/k/v biases, tied embeddings, MHA.
    check_parity(
        "Qwen2ForCausalLM",
        "Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, \
         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True)",
    );
}

fn tiny_random() -> CausalLm {
    let cfg: DecoderConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "tie_word_embeddings": false
    }))
    .unwrap();
    let m = CausalLm::random(&cfg, 7, Device::Cpu).unwrap();
    // Larger weights than the 0.02 init so that the distribution is far from uniform.
    let _g = tch::no_grad_guard();
    for (_, p) in m.params.named() {
        if p.dim() == 2 {
            let mut p = p.shallow_clone();
            let _ = p.g_mul_scalar_(10.0);
        }
    }
    m
}

/// The log-probs the generator reports equal the trainer forward's log-probs of the same tokens at
/// the same temperature, with prompts of different lengths (left padding) and without.
#[test]
fn generator_logprobs_equal_trainer_logprobs() {
    let _rng = crate::common::torch_rng_lock();
    let m = tiny_random();
    for (prompts, temp) in [(vec![vec![1i64, 2, 3, 4, 5], vec![6, 7], vec![8, 9, 10]], 0.7), (vec![vec![11i64, 12, 13]], 1.3)] {
        let cfg = GenerateConfig {
            max_new_tokens: 12,
            sampling: Sampling::Sample { temperature: temp, top_k: None, top_p: None },
            seed: 3,
            eos_ids: vec![0],
            pad_id: 95,
            return_hidden: true,
            return_trunk: Some(1),
            stop_check_every: 1,
            pack_weights: None,
            cpu_kernels: true,
        };
        let g = generate(&m, &prompts, &cfg).unwrap();
        let (seq, mask) = g.sequences();
        let p = g.prompt_ids.size()[1];
        let (lp, hidden) = m.token_logprobs(&seq, &mask, temp, p).unwrap();
        let d = masked_max_diff(&lp.unsqueeze(-1), &g.logprobs.unsqueeze(-1), &g.mask);
        assert!(d <= 1e-4, "generator vs trainer log-probs differ by {d}");
        // The hidden states returned by generation are the trainer's, on every real token.
        let gh = g.hidden.as_ref().unwrap();
        assert_eq!(gh.size(), hidden.size());
        let dh = masked_max_diff(gh, &hidden.detach(), &mask);
        assert!(dh <= 1e-4, "hidden states differ by {dh}");
        // So is the trunk (the input of block 1), and log-probs from it equal the full pass's.
        let gt = g.trunk.as_ref().unwrap();
        let dt = masked_max_diff(gt, &m.trunk(&seq, &mask, 1).unwrap(), &mask);
        assert!(dt <= 1e-4, "trunk differs by {dt}");
        let (lpt, _) = m.token_logprobs_from_trunk(gt, 1, &seq, &mask, temp, p).unwrap();
        let d = masked_max_diff(&lpt.unsqueeze(-1), &lp.unsqueeze(-1), &g.mask);
        assert!(d <= 1e-4, "log-probs from the generator's trunk differ by {d}");
        // The generator's per-token entropy is the trainer's at the same temperature.
        let n = seq.size()[1] - p;
        let logp = (m.forward(&seq, &mask).unwrap().narrow(1, p - 1, n) / temp).log_softmax(-1, tch::Kind::Float);
        let ent = -(logp.exp() * &logp).sum_dim_intlist([-1i64].as_slice(), false, tch::Kind::Float);
        let de = masked_max_diff(&ent.unsqueeze(-1), &g.entropy.unsqueeze(-1), &g.mask);
        assert!(de <= 1e-4, "entropy differs by {de}");
    }
}

/// bf16 autocast (model::precision): decoding with bf16 weight copies and a bf16 KV cache gives
/// log-probs within bf16 rounding of a bf16 trainer forward over the same tokens (not bitwise: a
/// (B, 1) decode step and a full-sequence pass round differently), and both stay near f32's.
#[test]
fn bf16_generator_logprobs_are_near_trainer_logprobs() {
    let _rng = crate::common::torch_rng_lock();
    let mut m = tiny_random();
    m.precision = r2m::model::precision::Precision::Bf16;
    let prompts = vec![vec![1i64, 2, 3, 4, 5], vec![6, 7], vec![8, 9, 10]];
    let cfg = GenerateConfig {
        max_new_tokens: 12,
        sampling: Sampling::Sample { temperature: 1.0, top_k: None, top_p: None },
        seed: 3,
        eos_ids: vec![0],
        pad_id: 95,
        return_hidden: true,
        ..Default::default()
    };
    let g = generate(&m, &prompts, &cfg).unwrap();
    assert_eq!(g.logprobs.kind(), Kind::Float);
    let (seq, mask) = g.sequences();
    let p = g.prompt_ids.size()[1];
    let (lp, hidden) = m.token_logprobs(&seq, &mask, 1.0, p).unwrap();
    assert_eq!((lp.kind(), hidden.kind()), (Kind::Float, Kind::Float));
    let d = masked_max_diff(&lp.unsqueeze(-1), &g.logprobs.unsqueeze(-1), &g.mask);
    assert!(d <= 0.1, "bf16 generator vs trainer log-probs differ by {d}");
    m.precision = r2m::model::precision::Precision::F32;
    let (lp32, _) = m.token_logprobs(&seq, &mask, 1.0, p).unwrap();
    let d32 = masked_max_diff(&lp.unsqueeze(-1), &lp32.unsqueeze(-1), &g.mask);
    assert!(d32 > 0.0 && d32 <= 0.1, "bf16 vs f32 trainer log-probs differ by {d32}");
    eprintln!("bf16: generator vs trainer {d}, bf16 vs f32 {d32}");
}

/// Decoding with r2m's CPU kernels (`GenerateConfig::cpu_kernels`: sampling, and attention over
/// the KV cache; at batch 1 on CPUs that prefer it, the matrix-vector kernel; at 8 rows or more on
/// CPUs that prefer it, r2m's decode GEMM) gives the tokens of
/// ATen's ops, with log-probs, entropies and hidden states equal up to f32 rounding: left padding,
/// an EOS stop, two temperatures, 12 prompts and one.
#[test]
fn cpu_kernels_decode_as_aten_ops() {
    let _rng = crate::common::torch_rng_lock();
    let m = tiny_random();
    let many: Vec<Vec<i64>> = (0..12).map(|i| (1..3 + i % 5).map(|t| (t * 7 + i) % 90 + 1).collect()).collect();
    let one = vec![many[3].clone()];
    for (prompts, temp) in [(&many, 0.7), (&many, 1.3), (&one, 0.7), (&one, 1.3)] {
        let run = |kernels| {
            let cfg = GenerateConfig {
                max_new_tokens: 16,
                seed: 9,
                sampling: Sampling::Sample { temperature: temp, top_k: None, top_p: None },
                eos_ids: vec![4],
                return_hidden: true,
                cpu_kernels: kernels,
                ..Default::default()
            };
            generate(&m, prompts, &cfg).unwrap()
        };
        let (fast, aten) = (run(true), run(false));
        assert!(fast.ids.equal(&aten.ids), "{} prompts, T {temp}: tokens differ", prompts.len());
        assert!(fast.mask.equal(&aten.mask), "{} prompts, T {temp}: masks differ", prompts.len());
        let d = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(d(&fast.logprobs, &aten.logprobs) < 1e-4, "log-probs differ by {}", d(&fast.logprobs, &aten.logprobs));
        assert!(d(&fast.entropy, &aten.entropy) < 1e-4, "entropies differ by {}", d(&fast.entropy, &aten.entropy));
        let (hf, ha) = (fast.hidden.unwrap(), aten.hidden.unwrap());
        assert!(d(&hf, &ha) < 1e-4, "hidden states differ by {}", d(&hf, &ha));
        assert!(d(&fast.logprobs, &aten.logprobs) > 0.0, "the sampling kernel did not run");
        // Sampling does not touch the hidden states: only the attention kernel moves them.
        assert!(d(&hf, &ha) > 0.0, "the attention kernel did not run");
    }
}

/// Decoding with MKL-packed weights (`model::packed`) gives exactly the tokens, log-probs and
/// hidden states of the plain path (x86-64 libtorch has MKL; elsewhere the forced path may error).
#[test]
fn packed_weights_decode_exactly_as_plain() {
    let _rng = crate::common::torch_rng_lock();
    let m = tiny_random();
    let prompts: Vec<Vec<i64>> = (0..8).map(|i| (1..3 + i % 4).map(|t| (t * 7 + i) % 90 + 1).collect()).collect();
    let run = |pack| {
        let cfg = GenerateConfig { max_new_tokens: 10, seed: 5, return_hidden: true, pack_weights: Some(pack), ..Default::default() };
        generate(&m, &prompts, &cfg)
    };
    let plain = run(false).unwrap();
    let packed = match run(true) {
        Ok(g) => g,
        Err(e) if !cfg!(target_arch = "x86_64") => return eprintln!("skipped: {e}"),
        Err(e) => panic!("{e}"),
    };
    assert!(packed.ids.equal(&plain.ids), "tokens differ");
    assert!(packed.logprobs.equal(&plain.logprobs), "log-probs differ");
    assert!(packed.hidden.unwrap().equal(&plain.hidden.unwrap()), "hidden states differ");

    // An optimizer step on the top block between two decodes (an RL step): the model's kept
    // packed copies of those weights must not be reused, the others may be.
    let top: Vec<(String, Tensor)> = m
        .params
        .named()
        .iter()
        .filter(|(n, _)| n.starts_with("model.layers.1."))
        .map(|(n, t)| (n.clone(), t.set_requires_grad(true)))
        .collect();
    assert!(!top.is_empty());
    let mut opt = r2m::train::AdamW::new(
        top.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
        r2m::train::AdamWConfig { lr: 1e-2, ..Default::default() },
    );
    let seq = packed.ids.shallow_clone();
    m.forward(&seq, &seq.ones_like()).unwrap().logsumexp([-1i64].as_slice(), false).sum(Kind::Float).backward();
    opt.step(1e-2).unwrap();
    for (_, t) in &top {
        let _ = t.set_requires_grad(false);
    }
    let plain2 = run(false).unwrap();
    let packed2 = run(true).unwrap();
    assert!(!plain2.logprobs.equal(&plain.logprobs), "the step changed nothing");
    assert!(packed2.ids.equal(&plain2.ids), "tokens differ after an optimizer step");
    assert!(packed2.logprobs.equal(&plain2.logprobs), "log-probs differ after an optimizer step: stale packed weights");
}

#[test]
fn sampling_is_seeded_and_stops_at_eos() {
    let _rng = crate::common::torch_rng_lock();
    let m = tiny_random();
    let cfg = GenerateConfig { max_new_tokens: 10, seed: 11, eos_ids: vec![], ..Default::default() };
    let a = generate(&m, &[vec![1, 2, 3]], &cfg).unwrap();
    let b = generate(&m, &[vec![1, 2, 3]], &cfg).unwrap();
    assert_eq!(Vec::<i64>::try_from(a.ids.view([-1])).unwrap(), Vec::<i64>::try_from(b.ids.view([-1])).unwrap());
    // Make the first sampled token an EOS: the row ends there, with mask 1 on it and 0 after.
    let first = a.ids.int64_value(&[0, 0]);
    let cfg2 = GenerateConfig { eos_ids: vec![first], ..cfg };
    let c = generate(&m, &[vec![1, 2, 3], vec![4, 5]], &cfg2).unwrap();
    assert_eq!(c.response(0), vec![first]);
    assert_eq!(c.mask.int64_value(&[0, 0]), 1);
    if c.mask.size()[1] > 1 {
        assert_eq!(c.mask.int64_value(&[0, 1]), 0);
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let m = tiny_random();
    let cfg = GenerateConfig { max_new_tokens: 4, ..Default::default() };
    let e = generate(&m, &[vec![1, 2], vec![]], &cfg).err().unwrap().to_string();
    assert!(e.contains("prompt 1 is empty"), "{e}");
    let long = vec![vec![1i64; 126]];
    let e = generate(&m, &long, &cfg).err().unwrap().to_string();
    assert!(e.contains("prompt 0 has 126 tokens") && e.contains("context of 128"), "{e}");
    let e = CausalLm::load_path("/no/such/model", Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("/no/such/model") && e.contains("not found"), "{e}");
    // A config whose shapes do not match the weights: the tensor and both shapes are named.
    let d = tmpdir();
    write_tiny(
        d.path(),
        "LlamaForCausalLM",
        "LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1, \
         num_attention_heads=4, max_position_embeddings=64)",
    );
    let cfg_path = d.path().join("config.json");
    let orig = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, orig.replace("\"intermediate_size\": 96", "\"intermediate_size\": 80")).unwrap();
    let cfg = DecoderConfig::from_file(&cfg_path).unwrap();
    let w = WeightMap::new(d.path(), safetensors::read_dir(d.path()).unwrap());
    let e = CausalLm::new(&cfg, Source::Load(w), Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("gate_proj.weight") && e.contains("[96, 64]") && e.contains("[80, 64]"), "{e}");
    // An HF folder without a tokenizer is an error naming tokenizer.json.
    std::fs::write(&cfg_path, orig).unwrap();
    let e = CausalLm::load(&ModelSource::HfDir(d.path().into()), Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("tokenizer.json"), "{e}");
}
