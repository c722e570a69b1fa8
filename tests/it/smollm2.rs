//! The real model: SmolLM2-135M-Instruct from its GGUF against transformers loading the same GGUF
//! (logits and greedy continuation), and the export round trip through transformers.
use crate::common::{python, tmpdir};
use r2m::model::causal_lm::CausalLm;
use r2m::model::export::export_hf;
use r2m::model::generate::{generate, GenerateConfig, Sampling};
use r2m::model::load::safetensors;
use r2m::tokenizer::Message;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

/// transformers: chat-template ids, logits and a 24-token greedy continuation, from `model_path`
/// (a GGUF file, or an HF folder when argv[2] is empty).
const REF_PY: &str = r#"
import sys, os, torch, transformers
from safetensors.torch import save_file
path, out, q = sys.argv[1], sys.argv[2], sys.argv[3]
if path.endswith(".gguf"):
    d, f = os.path.split(path)
    kw = dict(gguf_file=f)
else:
    d, kw = path, {}
tok = transformers.AutoTokenizer.from_pretrained(d, **kw)
m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, **kw).eval()
text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
with torch.no_grad():
    o = m(ids, output_hidden_states=True)
    logits = o.logits[0]
    hidden = torch.stack(o.hidden_states, 0)[:, 0]
    g = m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                   pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_bf16 = m(ids).logits[0].float()
save_file({"ids": ids[0].contiguous(), "logits": logits.contiguous(), "greedy": g.contiguous(),
           "hidden_states": hidden.contiguous(), "logits_bf16": logits_bf16.contiguous()}, out)
"#;

fn reference(model_path: &str) -> HashMap<String, Tensor> {
    let d = tmpdir();
    let out = d.path().join("ref.safetensors");
    python(REF_PY, &[model_path, out.to_str().unwrap(), QUESTION]);
    safetensors::read_file(&out).unwrap().into_iter().collect()
}

fn prompt_ids(tok: &r2m::tokenizer::Tokenizer) -> Vec<i64> {
    let msgs = [Message { role: "user".into(), content: QUESTION.into() }];
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    tok.encode(&text, false).unwrap().into_iter().map(i64::from).collect()
}

fn logits_of(m: &CausalLm, ids: &[i64]) -> Tensor {
    let _g = tch::no_grad_guard();
    let t = Tensor::from_slice(ids).view([1, -1]);
    m.forward(&t, &t.ones_like()).unwrap().squeeze_dim(0)
}

#[test]
fn smollm2_gguf_matches_transformers() {
    let gguf = r2m::paths::smollm2_gguf();
    let r = reference(gguf.to_str().unwrap());
    let loaded = CausalLm::load_path(gguf.to_str().unwrap(), Device::Cpu).unwrap();
    let ids = prompt_ids(&loaded.tokenizer);
    assert_eq!(ids, Vec::<i64>::try_from(&r["ids"]).unwrap(), "chat prompt token ids differ from transformers");
    let logits = logits_of(&loaded.model, &ids);
    let diff = (&logits - &r["logits"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-3, "logits max abs diff {diff} > 1e-3");
    // `r2m forward` writes the same logits and all L + 1 hidden states in HF order.
    let d = tmpdir();
    let out = d.path().join("fwd.safetensors");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["forward", "--device", "cpu", "--chat", "--model", gguf.to_str().unwrap(), "--text", QUESTION, "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let f: HashMap<String, Tensor> = safetensors::read_file(&out).unwrap().into_iter().collect();
    assert!(f["logits"].equal(&logits), "r2m forward's logits differ from the library's");
    assert_eq!(f["hidden_states"].size(), r["hidden_states"].size());
    // The residual stream reaches magnitudes in the hundreds, where f32 products summed in
    // another order (MKL picks its kernels per CPU, and this process and transformers' may take
    // different ones) differ by more than 1e-3: within 1e-3 + 1e-5 |h| (torch.allclose's form).
    let (h, rh) = (&f["hidden_states"], &r["hidden_states"]);
    let excess = ((h - rh).abs() - (rh.abs() * 1e-5 + 1e-3)).max().double_value(&[]);
    let dh = (h - rh).abs().max().double_value(&[]);
    assert!(excess <= 0.0, "hidden states max abs diff {dh} (largest |h| {})", rh.abs().max().double_value(&[]));
    let cfg = GenerateConfig {
        max_new_tokens: 24,
        sampling: Sampling::Greedy,
        eos_ids: loaded.tokenizer.eos_ids().into_iter().map(i64::from).collect(),
        pad_id: loaded.tokenizer.pad_id() as i64,
        ..Default::default()
    };
    let g = generate(&loaded.model, std::slice::from_ref(&ids), &cfg).unwrap();
    let want = Vec::<i64>::try_from(&r["greedy"]).unwrap();
    assert_eq!(g.response(0), want, "greedy continuation differs from transformers");
    let text = loaded.tokenizer.decode(&want.iter().map(|&i| i as u32).collect::<Vec<_>>(), true).unwrap();
    assert!(text.contains("Paris"), "{text}");

    // bf16 autocast (model::precision) against transformers under torch.autocast("cpu", bf16):
    // the same recipe. Where both processes run the same bf16 GEMM kernels the logits are equal
    // (bitwise on Intel CPUs); where MKL runs other kernels here than in transformers' process
    // (an AMD CPU: csrc/mkl_cpu.cpp), they are two bf16 computations as far from f32 as each
    // other, and each far from f32's.
    let mut m = loaded.model;
    m.precision = r2m::model::precision::Precision::Bf16;
    let lb = logits_of(&m, &ids);
    let peer = (&lb - &r["logits_bf16"]).abs().max().double_value(&[]);
    let vs_f32 = (&r["logits_bf16"] - &r["logits"]).abs().max().double_value(&[]);
    let ours_vs_f32 = (&lb - &r["logits"]).abs().max().double_value(&[]);
    eprintln!("bf16 logits: r2m vs transformers max abs diff {peer}; bf16 vs f32: transformers {vs_f32}, r2m {ours_vs_f32}");
    assert!(vs_f32 > 0.0, "the reference's autocast did nothing");
    if r2m::ffi::mkl_vendor_overridden() {
        assert!(
            ours_vs_f32 > 0.2 * vs_f32 && ours_vs_f32 <= 1.5 * vs_f32,
            "r2m's bf16 logits are {ours_vs_f32} from f32's, transformers' {vs_f32}"
        );
    } else {
        assert!(peer <= 1e-2 && peer <= 0.05 * vs_f32, "bf16 logits differ from transformers' by {peer} (bf16 vs f32: {vs_f32})");
    }
    let argmax_agree =
        lb.argmax(-1, false).eq_tensor(&r["logits_bf16"].argmax(-1, false)).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(argmax_agree >= 0.95, "bf16 next-token argmax agrees on {argmax_agree}");
}

#[test]
fn export_round_trip_through_transformers() {
    let gguf = r2m::paths::smollm2_gguf();
    let loaded = CausalLm::load_path(gguf.to_str().unwrap(), Device::Cpu).unwrap();
    let d = tmpdir();
    let dir = d.path().join("smollm2-hf");
    export_hf(&loaded.model, &loaded.tokenizer, &dir).unwrap();
    // transformers loads the folder (config, weights, tokenizer, chat template) and agrees.
    let r = reference(dir.to_str().unwrap());
    let ids = prompt_ids(&loaded.tokenizer);
    assert_eq!(ids, Vec::<i64>::try_from(&r["ids"]).unwrap());
    let want = logits_of(&loaded.model, &ids);
    let diff = (&want - &r["logits"]).abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "exported model in transformers: logits differ by {diff}");
    // And r2m reads its own export back to identical weights.
    let back = CausalLm::load_path(dir.to_str().unwrap(), Device::Cpu).unwrap();
    let again = logits_of(&back.model, &ids);
    assert!(again.equal(&want), "re-loaded export gives different logits");
    assert_eq!(back.model.params.num_params(), loaded.model.params.num_params());
    assert_eq!(want.kind(), Kind::Float);
}
