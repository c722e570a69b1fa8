//! Writes a causal LM back as an HF folder that `transformers` loads: config.json,
//! generation_config.json, model.safetensors (f32, LoRA merged, tied head omitted), tokenizer files.
use crate::error::{Error, Result};
use crate::model::causal_lm::CausalLm;
use crate::model::layers::Norm;
use crate::model::load::safetensors::write_file;
use crate::tokenizer::Tokenizer;
use std::path::Path;
use tch::Tensor;

/// The model's weights under HF names, with LoRA adapters folded into their base weights.
pub fn hf_state_dict(model: &CausalLm) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vec![];
    let arch = model.config.arch;
    let mut push = |n: &str, t: Tensor| out.push((arch.hf_name(n), t.to_kind(tch::Kind::Float)));
    push("model.embed_tokens.weight", model.model.embed_tokens.detach());
    let norm = |push: &mut dyn FnMut(&str, Tensor), n: &Norm| {
        push(&format!("{}.weight", n.name), n.weight.detach());
        if let Some(b) = &n.bias {
            push(&format!("{}.bias", n.name), b.detach());
        }
    };
    for b in &model.model.layers {
        for lin in b.linears() {
            push(&format!("{}.weight", lin.name), lin.merged_weight());
            if let Some(bias) = &lin.bias {
                push(&format!("{}.bias", lin.name), bias.detach());
            }
        }
        for n in b.norms() {
            norm(&mut push, n);
        }
    }
    norm(&mut push, &model.model.norm);
    if let Some(h) = &model.lm_head {
        push("lm_head.weight", h.merged_weight());
    }
    out
}

/// Exports `model` (+ `tokenizer`) to `dir`, creating it. Files are written atomically.
pub fn export_hf(model: &CausalLm, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cfg = model.config.clone();
    cfg.architectures = vec![cfg.arch.causal_lm_class()];
    cfg.raw.insert("torch_dtype".into(), "float32".into());
    cfg.tie_word_embeddings = model.lm_head.is_none();
    if cfg.bos_token_id.is_none() {
        cfg.bos_token_id = tokenizer.bos_id().map(|i| crate::model::config::TokenIds::One(i as i64));
    }
    if cfg.eos_token_id.is_none() {
        let e: Vec<i64> = tokenizer.eos_ids().iter().map(|&i| i as i64).collect();
        cfg.eos_token_id = match e.len() {
            0 => None,
            1 => Some(crate::model::config::TokenIds::One(e[0])),
            _ => Some(crate::model::config::TokenIds::Many(e)),
        };
    }
    let mut json = serde_json::to_value(&cfg).map_err(|e| Error::parse(dir, e))?;
    json["transformers_version"] = "4.57.1".into();
    write_json(&dir.join("config.json"), &json)?;
    let gen = serde_json::json!({
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": tokenizer.pad_id(),
    });
    write_json(&dir.join("generation_config.json"), &gen)?;
    write_file(&dir.join("model.safetensors"), &hf_state_dict(model))?;
    tokenizer.save_hf(dir)
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::parse(path, e))?;
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
