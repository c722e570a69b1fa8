//! Every decoder architecture against transformers, on tiny random models that transformers makes
//! here (seeded, saved as HF folders): logits and hidden states on a left-padded batch longer than
//! the sliding window, greedy KV-cache generation, the generator/trainer log-prob invariant, the
//! `*ForSequenceClassification` score both ways, the exported folder loaded back by transformers,
//! and a full and a LoRA training step that lower the loss.
use crate::common::{python, tmpdir};
use r2m::model::causal_lm::CausalLm;
use r2m::model::generate::{generate, GenerateConfig, Sampling};
use r2m::model::load::safetensors;
use r2m::model::precision::Precision;
use r2m::reward::model::{right_pad, Batch};
use r2m::reward::RewardModel;
use r2m::train::{apply_trainable, AdamW, AdamWConfig, Trainable};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Makes `lm/` (causal LM), `rm/` (sequence classifier, same config) and `ref.safetensors` for the
/// architecture named in argv[2].
const MAKE_PY: &str = r#"
import sys, json, torch, transformers as T
from safetensors.torch import save_file
out, arch = sys.argv[1], sys.argv[2]
common = dict(vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, pad_token_id=2, bos_token_id=1, eos_token_id=49151)
gqa = dict(num_key_value_heads=2)
specs = {
  "mistral": (T.MistralConfig, "Mistral", dict(gqa, sliding_window=4, tie_word_embeddings=False)),
  "qwen2": (T.Qwen2Config, "Qwen2", dict(gqa, use_sliding_window=True, sliding_window=4, max_window_layers=1)),
  "qwen3": (T.Qwen3Config, "Qwen3", dict(gqa, head_dim=16, use_sliding_window=True, sliding_window=4, max_window_layers=1,
            attention_bias=True)),
  "qwen3_plain": (T.Qwen3Config, "Qwen3", dict(gqa, head_dim=16)),
  "gemma2": (T.Gemma2Config, "Gemma2", dict(gqa, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
             attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
  "gemma3": (T.Gemma3TextConfig, None, dict(gqa, head_dim=8, query_pre_attn_scalar=16, sliding_window=4,
             layer_types=["sliding_attention", "full_attention"], rope_theta=1e6, rope_local_base_freq=1e4,
             rope_scaling=dict(rope_type="linear", factor=2.0), final_logit_softcapping=3.0)),
  "olmo2": (T.Olmo2Config, "Olmo2", dict(gqa, rms_norm_eps=1e-5)),
  "phi3": (T.Phi3Config, "Phi3", dict(gqa, partial_rotary_factor=0.5, sliding_window=4, original_max_position_embeddings=16,
           rope_scaling=dict(type="longrope", short_factor=[1.0, 2.0], long_factor=[3.0, 5.0]))),
  "phi3_long": (T.Phi3Config, "Phi3", dict(gqa, original_max_position_embeddings=4,
           rope_scaling=dict(type="longrope", short_factor=[1.0, 1.5, 2.0, 4.0], long_factor=[3.0, 5.0, 7.0, 9.0]))),
  "phi3_plain": (T.Phi3Config, "Phi3", dict(gqa, partial_rotary_factor=0.5, sliding_window=4)),
  "gpt_neox": (T.GPTNeoXConfig, "GPTNeoX", dict(rotary_pct=0.5, use_parallel_residual=True, tie_word_embeddings=False)),
  "gpt_neox_seq": (T.GPTNeoXConfig, "GPTNeoX", dict(rotary_pct=1.0, use_parallel_residual=False, attention_bias=False)),
}
# GGUF keeps no query_pre_attn_scalar: llama.cpp scales by head_dim (tested with these).
specs["gemma2_gguf"] = (T.Gemma2Config, "Gemma2", dict(specs["gemma2"][2], query_pre_attn_scalar=8))
specs["gemma3_gguf"] = (T.Gemma3TextConfig, None, dict(specs["gemma3"][2], query_pre_attn_scalar=8))
cls, prefix, extra = specs[arch]
cfg = cls(**common, **extra)
cfg._attn_implementation = "eager"
torch.manual_seed(0)
lm_cls = T.Gemma3ForCausalLM if arch.startswith("gemma3") else getattr(T, prefix + "ForCausalLM")
m = lm_cls(cfg).eval()
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.3)
m.save_pretrained(out + "/lm", safe_serialization=True)
ids = torch.tensor([[0, 0, 0, 5, 17, 99, 3, 44, 8, 9, 10, 11], list(range(11, 23))])
mask = torch.tensor([[0, 0, 0] + [1] * 9, [1] * 12])
pos = (mask.cumsum(1) - 1).clamp(min=0)
with torch.no_grad():
    o = m(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    prompts = torch.tensor([[2, 2, 7, 8, 9], [21, 22, 23, 24, 25]])
    pmask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    gen = m.generate(input_ids=prompts, attention_mask=pmask, max_new_tokens=7, do_sample=False, pad_token_id=2)[:, 5:]
save_file({"ids": ids, "mask": mask, "logits": o.logits.contiguous(), "hidden": o.hidden_states[-1].contiguous(),
           "gen": gen.contiguous()}, out + "/ref.safetensors")
rm_cls = T.Gemma3TextForSequenceClassification if arch.startswith("gemma3") else getattr(T, prefix + "ForSequenceClassification", None)
if rm_cls is None:  # transformers has no OLMo 2 classifier
    sys.exit(0)
cfg.num_labels = 1
torch.manual_seed(1)
rm = rm_cls(cfg).eval()
with torch.no_grad():
    for p in rm.parameters():
        p.normal_(0, 0.3)
rm.save_pretrained(out + "/rm", safe_serialization=True)
"#;

/// argv: an RM folder (or "-"), sequences (JSON), an exported LM folder, ids and mask (JSON): prints
/// the RM's scores (right padding with id 2) and the LM's logits on ids as JSON.
const CHECK_PY: &str = r#"
import sys, json, torch, transformers as T
seqs = json.loads(sys.argv[2])
n = max(len(s) for s in seqs)
ids = torch.tensor([s + [2] * (n - len(s)) for s in seqs])
mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
lm = T.AutoModelForCausalLM.from_pretrained(sys.argv[3], torch_dtype=torch.float32, attn_implementation="eager").eval()
lids, lmask = torch.tensor(json.loads(sys.argv[4])), torch.tensor(json.loads(sys.argv[5]))
with torch.no_grad():
    scores = None
    if sys.argv[1] != "-":
        rm = T.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], torch_dtype=torch.float32, attn_implementation="eager").eval()
        scores = rm(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    logits = lm(input_ids=lids, attention_mask=lmask, position_ids=(lmask.cumsum(1) - 1).clamp(min=0)).logits
print(json.dumps({"scores": scores, "logits": logits.flatten().tolist()}))
"#;

fn put_tokenizer(dir: &Path) {
    let tok = r2m::model::load::gguf::read_tokenizer(&r2m::paths::smollm2_gguf()).unwrap();
    tok.save_hf(dir).unwrap();
}

fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let m = mask.to_kind(Kind::Float).unsqueeze(-1);
    ((a - b).abs() * m).max().double_value(&[])
}

fn tensor_json(t: &Tensor) -> String {
    let rows: Vec<Vec<i64>> = (0..t.size()[0]).map(|i| Vec::<i64>::try_from(t.get(i)).unwrap()).collect();
    serde_json::to_string(&rows).unwrap()
}

/// The loss of a causal LM on `ids` (mean negative log-likelihood of tokens 1..).
fn nll(m: &CausalLm, ids: &Tensor, mask: &Tensor) -> Tensor {
    let (lp, _) = m.token_logprobs(ids, mask, 1.0, 1).unwrap();
    -lp.mean(Kind::Float)
}

/// Three AdamW steps on the loss of one sequence: returns (loss before, loss after).
fn train_steps(m: &mut CausalLm, t: &Trainable, ids: &Tensor, mask: &Tensor) -> (f64, f64) {
    let params = apply_trainable(m, t, 0).unwrap();
    assert!(!params.is_empty());
    let mut opt = AdamW::new(params, AdamWConfig { lr: 1e-2, weight_decay: 0.0, ..Default::default() });
    let before = tch::no_grad(|| nll(m, ids, mask)).double_value(&[]);
    for _ in 0..3 {
        opt.zero_grad();
        nll(m, ids, mask).backward();
        opt.step(1e-2).unwrap();
    }
    (before, tch::no_grad(|| nll(m, ids, mask)).double_value(&[]))
}

fn check_arch(arch: &str, model_type: &str, lora: &[&str]) -> CausalLm {
    check(arch, model_type, lora, true)
}

/// `seq_cls`: transformers has a `*ForSequenceClassification` for this architecture.
fn check(arch: &str, model_type: &str, lora: &[&str], seq_cls: bool) -> CausalLm {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    python(MAKE_PY, &[d.path().to_str().unwrap(), arch]);
    let (lm_dir, rm_dir) = (d.path().join("lm"), d.path().join("rm"));
    put_tokenizer(&lm_dir);
    put_tokenizer(&rm_dir);
    let r: HashMap<String, Tensor> = safetensors::read_file(&d.path().join("ref.safetensors")).unwrap().into_iter().collect();
    let loaded = CausalLm::load_path(lm_dir.to_str().unwrap(), Device::Cpu).unwrap();
    let m = loaded.model;
    assert_eq!(m.config.arch.model_type(), model_type);

    // Logits and final hidden states on a left-padded batch longer than the window.
    let (ids, mask) = (&r["ids"], &r["mask"]);
    let h = tch::no_grad(|| m.forward_hidden(ids, mask, false)).unwrap();
    let logits = tch::no_grad(|| m.logits(&h.last));
    let (dl, dh) = (masked_max_diff(&logits, &r["logits"], mask), masked_max_diff(&h.last, &r["hidden"], mask));
    assert!(dl <= 1e-4 && dh <= 1e-4, "{arch}: logits differ by {dl}, hidden states by {dh}");

    // Greedy KV-cache generation gives transformers' tokens; its log-probs are the trainer's.
    let prompts = vec![vec![7i64, 8, 9], vec![21, 22, 23, 24, 25]];
    let g =
        generate(&m, &prompts, &GenerateConfig { max_new_tokens: 7, sampling: Sampling::Greedy, pad_id: 2, ..Default::default() }).unwrap();
    assert!(g.ids.equal(&r["gen"]), "{arch}: greedy tokens {} vs transformers {}", tensor_json(&g.ids), tensor_json(&r["gen"]));
    let (seq, seq_mask) = g.sequences();
    let (lp, _) = tch::no_grad(|| m.token_logprobs(&seq, &seq_mask, 1.0, g.prompt_ids.size()[1])).unwrap();
    let d_lp = masked_max_diff(&lp.unsqueeze(-1), &g.logprobs.unsqueeze(-1), &g.mask);
    assert!(d_lp <= 1e-4, "{arch}: generator vs trainer log-probs differ by {d_lp}");

    // bf16 autocast stays near f32.
    let mut m = m;
    m.precision = Precision::Bf16;
    let lb = tch::no_grad(|| m.forward(ids, mask)).unwrap();
    m.precision = Precision::F32;
    let db = masked_max_diff(&lb, &r["logits"], mask);
    let scale = r["logits"].abs().max().double_value(&[]);
    assert!(db <= 0.1 * scale.max(1.0), "{arch}: bf16 logits differ by {db} (max |logit| {scale})");

    // The sequence classifier: scores as transformers', and the saved folder loads there the same.
    let seqs = vec![vec![5i64, 17, 99, 3, 44, 8, 9], vec![11, 12], vec![13, 14, 15, 16, 17, 18, 19, 20, 21]];
    let rm = RewardModel::load(if seq_cls { rm_dir.to_str().unwrap() } else { lm_dir.to_str().unwrap() }, 0, Device::Cpu).unwrap();
    let b = right_pad(&seqs, 2);
    let (s, _) = tch::no_grad(|| rm.score(&Batch { ids: b.ids, mask: b.mask })).unwrap();
    let got = Vec::<f64>::try_from(s.to_kind(Kind::Double)).unwrap();
    let saved_rm = d.path().join("rm-saved");
    rm.save(&saved_rm).unwrap();

    // Export, then transformers loads both folders (and the classifier transformers wrote).
    let export = d.path().join("export");
    r2m::model::export::export_hf(&m, &loaded.tokenizer, &export).unwrap();
    let seqs_json = serde_json::to_string(&seqs).unwrap();
    let check = |rm: &Path, lm: &Path, ids: &str, mask: &str| -> serde_json::Value {
        let rm = if seq_cls { rm.to_str().unwrap() } else { "-" };
        serde_json::from_str(python(CHECK_PY, &[rm, &seqs_json, lm.to_str().unwrap(), ids, mask]).trim()).unwrap()
    };
    let v = check(&saved_rm, &export, &tensor_json(ids), &tensor_json(mask));
    let exported: Vec<f32> = serde_json::from_value(v["logits"].clone()).unwrap();
    let exported = Tensor::from_slice(&exported).view(logits.size().as_slice());
    let de = masked_max_diff(&exported, &logits, mask);
    assert!(de <= 1e-4, "{arch}: the exported folder's logits in transformers differ by {de}");
    let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4);
    if seq_cls {
        let saved: Vec<f64> = serde_json::from_value(v["scores"].clone()).unwrap();
        let orig: Vec<f64> = serde_json::from_value(check(&rm_dir, &export, "[[1]]", "[[1]]")["scores"].clone()).unwrap();
        assert!(close(&got, &orig) && close(&got, &saved), "{arch}: r2m scores {got:?}, transformers {orig:?}, saved {saved:?}");
    } else {
        let again = RewardModel::load(saved_rm.to_str().unwrap(), 5, Device::Cpu).unwrap();
        let b = right_pad(&seqs, 2);
        let (s2, _) = tch::no_grad(|| again.score(&Batch { ids: b.ids, mask: b.mask })).unwrap();
        let s2 = Vec::<f64>::try_from(s2.to_kind(Kind::Double)).unwrap();
        assert!(close(&got, &s2), "{arch}: saved RM scores {s2:?} vs {got:?}");
    }

    // A full training step and a LoRA step lower the loss.
    let (ids1, mask1) = (ids.narrow(0, 1, 1), mask.narrow(0, 1, 1));
    let (a, b) = train_steps(&mut m, &Trainable::All, &ids1, &mask1);
    assert!(b < a, "{arch}: full training did not lower the loss ({a} -> {b})");
    let mut m = CausalLm::load_path(lm_dir.to_str().unwrap(), Device::Cpu).unwrap().model;
    let targets = lora.iter().map(|s| s.to_string()).collect();
    let (a, b) = train_steps(&mut m, &Trainable::Lora { rank: 4, alpha: 8.0, targets }, &ids1, &mask1);
    assert!(b < a, "{arch}: LoRA training did not lower the loss ({a} -> {b})");
    CausalLm::load_path(lm_dir.to_str().unwrap(), Device::Cpu).unwrap().model
}

#[test]
fn mistral_with_a_sliding_window_matches_transformers() {
    check_arch("mistral", "mistral", &["q_proj", "v_proj"]);
}

#[test]
fn qwen2_with_a_sliding_window_matches_transformers() {
    check_arch("qwen2", "qwen2", &["q_proj", "down_proj"]);
}

#[test]
fn qwen3_matches_transformers() {
    check_arch("qwen3", "qwen3", &["k_proj", "up_proj"]);
}

#[test]
fn gemma2_matches_transformers() {
    check_arch("gemma2", "gemma2", &["q_proj", "gate_proj"]);
}

#[test]
fn gemma3_matches_transformers() {
    check_arch("gemma3", "gemma3_text", &["o_proj", "down_proj"]);
}

#[test]
fn olmo2_matches_transformers() {
    // transformers has no Olmo2ForSequenceClassification: the RM is checked against itself saved.
    check("olmo2", "olmo2", &["q_proj", "up_proj"], false);
}

#[test]
fn phi3_matches_transformers() {
    // Short LongRoPE factors (everything within the original 16 positions), then long ones (the
    // original context is 4: the prompts already pass it).
    let m = check_arch("phi3", "phi3", &["qkv_proj", "gate_up_proj"]);
    check_arch("phi3_long", "phi3", &["o_proj", "down_proj"]);
    // A generation that crosses the original context: at the switch the whole sequence is run
    // again with the long factors, so every later token's log-prob is the full pass's.
    let _rng = crate::common::torch_rng_lock();
    let sampling = Sampling::Sample { temperature: 1.0, top_k: None, top_p: None };
    let cfg = GenerateConfig { max_new_tokens: 20, seed: 1, pad_id: 2, sampling, ..Default::default() };
    let g = generate(&m, &[vec![7i64, 8, 9], vec![21, 22, 23, 24, 25]], &cfg).unwrap();
    let (seq, seq_mask) = g.sequences();
    let p = g.prompt_ids.size()[1];
    let (lp, _) = tch::no_grad(|| m.token_logprobs(&seq, &seq_mask, 1.0, p)).unwrap();
    let after = 16 - p + 1; // the first token predicted from the rebuilt cache
    let tail = |t: &Tensor| t.narrow(1, after, 20 - after);
    let d = masked_max_diff(&tail(&lp).unsqueeze(-1), &tail(&g.logprobs).unsqueeze(-1), &tail(&g.mask));
    assert!(d <= 1e-4, "after the switch, generator vs trainer log-probs differ by {d}");
    let before =
        masked_max_diff(&lp.narrow(1, 0, after).unsqueeze(-1), &g.logprobs.narrow(1, 0, after).unsqueeze(-1), &g.mask.narrow(1, 0, after));
    assert!(before > 1e-3, "before the switch the short factors were used ({before})");
}

#[test]
fn gpt_neox_matches_transformers() {
    check_arch("gpt_neox", "gpt_neox", &["qkv_proj", "down_proj"]);
    check_arch("gpt_neox_seq", "gpt_neox", &["o_proj", "up_proj"]);
}

/// argv: the tiny LM folder, the llama.cpp architecture name, the output file: writes the folder's
/// weights as llama.cpp's converter names and stores them (f32), with the metadata it writes and a
/// placeholder byte-level tokenizer.
const TO_GGUF_PY: &str = r#"
import sys, json, numpy as np, gguf
from safetensors.numpy import load_file
d, arch, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = json.load(open(d + "/config.json"))
w = load_file(d + "/model.safetensors")
gemma = arch.startswith("gemma")
g = gguf.GGUFWriter(out, arch)
u = lambda k, v: g.add_uint32(f"{arch}.{k}", int(v))
u("context_length", c["max_position_embeddings"]); u("embedding_length", c["hidden_size"])
u("block_count", c["num_hidden_layers"]); u("feed_forward_length", c["intermediate_size"])
u("attention.head_count", c["num_attention_heads"]); u("attention.head_count_kv", c.get("num_key_value_heads", c["num_attention_heads"]))
hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
if arch == "gptneox":
    g.add_float32(f"{arch}.attention.layer_norm_epsilon", c["layer_norm_eps"])
    g.add_bool(f"{arch}.use_parallel_residual", c["use_parallel_residual"])
    u("rope.dimension_count", int(hd * c["rotary_pct"]))
    g.add_float32(f"{arch}.rope.freq_base", c["rotary_emb_base"])
else:
    g.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c["rms_norm_eps"])
    g.add_float32(f"{arch}.rope.freq_base", c["rope_theta"])
if arch == "phi3":
    u("rope.dimension_count", int(hd * c["partial_rotary_factor"]))
    u("attention.sliding_window", c["sliding_window"])
if "head_dim" in c:
    u("attention.key_length", c["head_dim"]); u("attention.value_length", c["head_dim"])
if gemma:
    u("attention.sliding_window", c["sliding_window"])
    for k in ("attn_logit_softcapping", "final_logit_softcapping"):
        if c.get(k) is not None:
            g.add_float32(f"{arch}.{k}", c[k])
    if arch == "gemma3":
        u("attention.sliding_window_pattern", 2)
    if c.get("rope_scaling"):
        g.add_string(f"{arch}.rope.scaling.type", c["rope_scaling"]["rope_type"])
        g.add_float32(f"{arch}.rope.scaling.factor", c["rope_scaling"]["factor"])
g.add_string("tokenizer.ggml.model", "gpt2"); g.add_string("tokenizer.ggml.pre", "default")
g.add_array("tokenizer.ggml.tokens", ["a", "b", "ab"] + [f"t{i}" for i in range(3, c["vocab_size"])])
g.add_array("tokenizer.ggml.merges", ["a b"])
g.add_uint32("tokenizer.ggml.eos_token_id", c["eos_token_id"])
names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
         "post_attention_layernorm": "post_attention_norm" if gemma or arch == "olmo2" else "ffn_norm",
         "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm"}
neox = {"gpt_neox.embed_in": "model.embed_tokens", "gpt_neox.final_layer_norm": "model.norm", "embed_out": "lm_head",
        "attention.query_key_value": "self_attn.qkv_proj", "attention.dense": "self_attn.o_proj",
        "mlp.dense_h_to_4h": "mlp.up_proj", "mlp.dense_4h_to_h": "mlp.down_proj", "gpt_neox.layers": "model.layers"}
names.update({"self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"})
nh = c["num_attention_heads"]
for n, t in w.items():
    if arch == "gptneox":
        if n.endswith("attention.query_key_value.weight") or n.endswith("attention.query_key_value.bias"):
            # llama.cpp's converter: each head's [q; k; v] rows to [all q; all k; all v]
            rows = t.reshape((nh, 3, -1) + t.shape[1:])
            t = np.concatenate([rows[:, i].reshape((-1,) + t.shape[1:]) for i in range(3)], axis=0)
        for a, b in neox.items():
            n = n.replace(a, b)
    if n.startswith("model.norm."): m = "output_norm." + n.rsplit(".", 1)[1]
    elif n == "model.embed_tokens.weight": m = "token_embd.weight"
    elif n == "lm_head.weight": m = "output.weight"
    else:
        i, rest = n[len("model.layers."):].split(".", 1)
        part, suffix = rest.rsplit(".", 1)
        m = f"blk.{i}.{names[part]}.{suffix}"
    if gemma and n.endswith("norm.weight"):
        t = t + 1  # llama.cpp stores Gemma's norms as 1 + w
    g.add_tensor(m, t.astype(np.float32))
g.write_header_to_file(); g.write_kv_data_to_file(); g.write_tensors_to_file(); g.close()
"#;

/// The tiny models written as GGUF (llama.cpp's names and metadata) load to the same logits as
/// their HF folders.
#[test]
fn gguf_files_of_each_architecture_load_as_their_hf_folders() {
    let _rng = crate::common::torch_rng_lock();
    // (llama.cpp's qwen3 metadata has no sliding window: the plain Qwen3 here.)
    let cases = [
        ("qwen3_plain", "qwen3"),
        ("gemma2_gguf", "gemma2"),
        ("gemma3_gguf", "gemma3"),
        ("olmo2", "olmo2"),
        ("phi3_plain", "phi3"),
        ("gpt_neox", "gptneox"),
    ];
    for (arch, gguf_arch) in cases {
        let d = tmpdir();
        python(MAKE_PY, &[d.path().to_str().unwrap(), arch]);
        let lm = d.path().join("lm");
        let file = d.path().join("m.gguf");
        python(TO_GGUF_PY, &[lm.to_str().unwrap(), gguf_arch, file.to_str().unwrap()]);
        put_tokenizer(&lm);
        let r: HashMap<String, Tensor> = safetensors::read_file(&d.path().join("ref.safetensors")).unwrap().into_iter().collect();
        let g = CausalLm::load_path(file.to_str().unwrap(), Device::Cpu).unwrap().model;
        let hf = CausalLm::load_path(lm.to_str().unwrap(), Device::Cpu).unwrap().model;
        // The same layout, up to the f32 that GGUF stores the norm's epsilon in.
        let mut layout = g.config.layout.clone();
        assert!((layout.norm_eps - hf.config.layout.norm_eps).abs() < 1e-12);
        layout.norm_eps = hf.config.layout.norm_eps;
        assert_eq!(layout, hf.config.layout, "{arch}: the GGUF's layout");
        let (ids, mask) = (&r["ids"], &r["mask"]);
        let lg = tch::no_grad(|| g.forward(ids, mask)).unwrap();
        let d = masked_max_diff(&lg, &r["logits"], mask);
        assert!(d <= 1e-4, "{arch}: GGUF logits differ from transformers' by {d}");
    }
}
