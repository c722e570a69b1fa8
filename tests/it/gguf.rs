//! GGUF import against transformers: the config `AutoConfig.from_pretrained(dir, gguf_file=..)`
//! derives, and every tensor of the state dict `from_pretrained(.., gguf_file=..)` loads (its
//! `load_gguf_checkpoint(.., return_tensors=True, model_to_load=<meta model>)`, run directly because
//! `from_pretrained` needs `accelerate` for GGUF), written to safetensors by Python. Plus bad files.
use crate::common;
use r2m::model::load::gguf;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

const REF_SCRIPT: &str = r#"
# Parse the GGUF once per process: transformers builds a GGUFReader per call (config, tokenizer,
# tensors), each ~6 s for SmolLM2's 49k-token metadata. The reader is read-only, so sharing it is safe.
import gguf
_readers, _Reader = {}, gguf.GGUFReader
def _shared_reader(path, *a, **k):
    if str(path) not in _readers:
        _readers[str(path)] = _Reader(path, *a, **k)
    return _readers[str(path)]
gguf.GGUFReader = _shared_reader
import json, os, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
from safetensors.torch import save_file
path, out = sys.argv[1:]
d, f = os.path.dirname(path), os.path.basename(path)
cfg = AutoConfig.from_pretrained(d, gguf_file=f)
with torch.device("meta"):
    dummy = AutoModelForCausalLM.from_config(cfg)
sd = load_gguf_checkpoint(path, return_tensors=True, model_to_load=dummy)["tensors"]
sd = {k: torch.as_tensor(v).to(torch.float32).contiguous() for k, v in sd.items()}
save_file(sd, os.path.join(out, "ref.safetensors"))
print(json.dumps(cfg.to_dict()))
"#;

struct Fixture {
    model: gguf::GgufModel,
    hf_config: serde_json::Value,
    ref_file: PathBuf,
}

/// r2m's load of SmolLM2, and transformers' config + state dict for it (one Python run). Behind a
/// mutex: tch tensors are `Send` but not `Sync`.
fn fixture() -> MutexGuard<'static, Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    let m = F.get_or_init(|| {
        let path = r2m::paths::smollm2_gguf();
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-gguf");
        std::fs::create_dir_all(&out).unwrap();
        let py = std::thread::spawn({
            let (path, out) = (path.clone(), out.clone());
            move || common::python(REF_SCRIPT, &[path.to_str().unwrap(), out.to_str().unwrap()])
        });
        let model = gguf::load(&path).expect("load SmolLM2 GGUF");
        let stdout = py.join().unwrap();
        let hf_config = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        Mutex::new(Fixture { model, hf_config, ref_file: out.join("ref.safetensors") })
    });
    // A failed test elsewhere must not hide this one's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn smollm2_config_equals_transformers() {
    let f = fixture();
    let (c, h) = (&f.model.config, &f.hf_config);
    let int = |k: &str| h[k].as_i64().unwrap_or_else(|| panic!("transformers config has no int {k}"));
    assert_eq!(c.arch.model_type(), h["model_type"].as_str().unwrap());
    assert_eq!(c.vocab_size, int("vocab_size"));
    assert_eq!(c.hidden_size, int("hidden_size"));
    assert_eq!(c.intermediate_size, int("intermediate_size"));
    assert_eq!(c.num_hidden_layers, int("num_hidden_layers"));
    assert_eq!(c.num_attention_heads, int("num_attention_heads"));
    assert_eq!(c.n_kv_heads(), int("num_key_value_heads"));
    assert_eq!(c.head_dim(), int("head_dim"));
    assert_eq!(c.max_position_embeddings, int("max_position_embeddings"));
    assert_eq!(c.norm_eps(), h["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(c.layout.rope.theta, h["rope_theta"].as_f64().unwrap());
    assert_eq!(c.tie_word_embeddings, h["tie_word_embeddings"].as_bool().unwrap());
    assert_eq!(c.layout.qkv_bias, h["attention_bias"].as_bool().unwrap());
    assert_eq!(c.layout.act, r2m::model::arch::Act::Silu);
    assert_eq!(h["hidden_act"].as_str(), Some("silu"));
    assert_eq!(c.bos_token_id.as_ref().unwrap().to_vec(), vec![int("bos_token_id")]);
    assert_eq!(c.eos_ids(), vec![int("eos_token_id")]);
    assert_eq!(c.pad_token_id, Some(int("pad_token_id")));
    assert_eq!(c.architectures, vec!["LlamaForCausalLM".to_string()]);
    // SmolLM2-135M: the numbers behind the comparison.
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.n_kv_heads()), (576, 30, 9, 3));
}

#[test]
fn smollm2_tensors_equal_transformers_state_dict() {
    let f = fixture();
    let reference: HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&f.ref_file).expect("reading transformers' state dict").into_iter().collect();
    let mut ours: Vec<&str> = f.model.tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut theirs: Vec<&str> = reference.keys().map(|s| s.as_str()).collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "tensor names");
    assert_eq!(ours.len(), 272);
    for (name, t) in &f.model.tensors {
        let r = &reference[name];
        assert_eq!(t.size(), r.size(), "{name}: shape");
        assert_eq!(t.kind(), tch::Kind::Float, "{name}: kind");
        let diff = (t - r).abs().max().double_value(&[]);
        assert!(diff <= 1e-6, "{name}: max |r2m - transformers| = {diff}");
    }
    // The q/k un-permutation is not a no-op: the raw GGUF order differs from HF's.
    let q = &f.model.tensors.iter().find(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight").unwrap().1;
    let raw = gguf::reverse_permute(&gguf::reverse_permute(q, 9).unwrap(), 9).unwrap();
    assert!((&raw - q).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn smollm2_tokenizer_comes_with_the_model() {
    let f = fixture();
    let tok = &f.model.tokenizer;
    assert_eq!(tok.vocab_size() as i64, f.model.config.vocab_size);
    assert_eq!(tok.eos_ids(), vec![2]);
    assert!(tok.chat_template().is_some());
}

const BAD_SCRIPT: &str = r#"
import sys, numpy as np, gguf
from gguf import GGMLQuantizationType as Q
out = sys.argv[1]

def writer(name, arch):
    w = gguf.GGUFWriter(f"{out}/{name}", arch)
    w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(32)
    w.add_feed_forward_length(64); w.add_head_count(2); w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2"); w.add_token_list(["a", "b", "ab"]); w.add_token_merges(["a b"])
    return w

def done(w):
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

x = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)

w = writer("arch.gguf", "gpt2")
w.add_tensor("token_embd.weight", x)
done(w)

w = writer("quant.gguf", "llama")
w.add_tensor("token_embd.weight", x)
# Q8_1 (40 bytes per 32 values in gguf-py): a type candle reads but r2m does not load.
w.add_tensor("blk.0.attn_q.weight", np.zeros((32, 40), dtype=np.uint8), raw_dtype=Q.Q8_1)
done(w)

# IQ4_NL (id 20): a type candle's reader does not know at all (18 bytes per 32 values).
w = writer("iq.gguf", "llama")
w.add_tensor("blk.0.attn_k.weight", np.zeros((32, 18), dtype=np.uint8), raw_dtype=Q.IQ4_NL)
done(w)
"#;

#[test]
fn bad_files_give_errors_naming_the_problem() {
    let d = common::tmpdir();
    common::python(BAD_SCRIPT, &[d.path().to_str().unwrap()]);
    let err = |name: &str| gguf::load(&d.path().join(name)).err().expect("must fail").to_string();

    let e = err("arch.gguf");
    assert!(e.contains("arch.gguf") && e.contains("'gpt2'") && e.contains("llama, qwen2, qwen3, gemma2, gemma3"), "{e}");
    let e = err("quant.gguf");
    assert!(e.contains("quant.gguf") && e.contains("blk.0.attn_q.weight") && e.contains("Q8_1"), "{e}");
    assert!(e.contains("Q4_0") && e.contains("Q6_K"), "lists the supported types: {e}");
    let e = err("iq.gguf");
    assert!(e.contains("iq.gguf") && e.contains("IQ4_NL"), "{e}");

    let missing = d.path().join("nope.gguf");
    let e = gguf::load(&missing).err().unwrap();
    assert!(matches!(e, r2m::Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("nope.gguf"), "{e}");
    std::fs::write(d.path().join("junk.gguf"), b"not a gguf file at all").unwrap();
    let e = err("junk.gguf");
    assert!(e.contains("junk.gguf"), "{e}");
}
