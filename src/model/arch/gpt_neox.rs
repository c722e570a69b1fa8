//! GPT-NeoX / Pythia: LayerNorm with bias; attention and MLP in parallel off the same input
//! (`use_parallel_residual`, else sequential pre-norm); one `query_key_value` projection whose rows
//! are [q; k; v] per head; rotary on the first `rotary_pct` of each head; plain gelu MLP with
//! biases; untied `embed_out`.
//!
//! Tensors are renamed on load to the Llama layout's names (and back on export), so the rest of
//! r2m sees `model.layers.N.self_attn.qkv_proj` where the checkpoint says
//! `gpt_neox.layers.N.attention.query_key_value`.
use super::{base_layout, head_dim, Act, BlockKind, Fields, Layout, MlpKind, NormKind, QkvKind, RopeSpec};
use crate::error::Result;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = head_dim(f)?;
    let heads = f.req_int("num_attention_heads")?;
    if let Some(kv) = f.int("num_key_value_heads")?.filter(|kv| *kv != heads) {
        return Err(f.refuse(
            "num_key_value_heads",
            &kv.into(),
            "GPT-NeoX's fused per-head projection has as many key/value heads as query heads",
        ));
    }
    let pct = match f.float("rotary_pct")? {
        Some(p) => {
            f.take("partial_rotary_factor");
            p
        }
        None => f.float("partial_rotary_factor")?.unwrap_or(0.25),
    };
    let theta = match f.float("rotary_emb_base")? {
        Some(b) => {
            f.take("rope_theta");
            b
        }
        None => f.float("rope_theta")?.unwrap_or(10_000.0),
    };
    let rope = RopeSpec { theta, scaling: f.rope_scaling()?, rotary_dim: (hd as f64 * pct) as i64 };
    let mut l = base_layout(f.float("layer_norm_eps")?.unwrap_or(1e-5), rope);
    l.norm = NormKind::Layer;
    l.block = if f.bool("use_parallel_residual")?.unwrap_or(true) { BlockKind::Parallel } else { BlockKind::PreNorm };
    l.qkv = QkvKind::FusedPerHead;
    l.mlp = MlpKind::Plain;
    l.act = Act::parse(f, "hidden_act", "gelu")?;
    let bias = f.bool("attention_bias")?.unwrap_or(true);
    (l.qkv_bias, l.o_bias, l.mlp_bias) = (bias, bias, true);
    for k in ["attention_dropout", "hidden_dropout"] {
        f.no_dropout(k)?;
    }
    Ok(l)
}

const RENAMES: &[(&str, &str)] = &[
    ("attention.query_key_value.", "self_attn.qkv_proj."),
    ("attention.dense.", "self_attn.o_proj."),
    ("mlp.dense_h_to_4h.", "mlp.up_proj."),
    ("mlp.dense_4h_to_h.", "mlp.down_proj."),
];

/// `gpt_neox.*` / `embed_out` names to the Llama layout's.
pub fn internal_name(hf: &str) -> String {
    if let Some(rest) = hf.strip_prefix("embed_out.") {
        return format!("lm_head.{rest}");
    }
    let Some(rest) = hf.strip_prefix("gpt_neox.") else { return hf.to_string() };
    if let Some(r) = rest.strip_prefix("embed_in.") {
        return format!("model.embed_tokens.{r}");
    }
    if let Some(r) = rest.strip_prefix("final_layer_norm.") {
        return format!("model.norm.{r}");
    }
    let mut out = format!("model.{rest}");
    for (from, to) in RENAMES {
        out = out.replace(from, to);
    }
    out
}

pub fn hf_name(internal: &str) -> String {
    if let Some(rest) = internal.strip_prefix("lm_head.") {
        return format!("embed_out.{rest}");
    }
    let Some(rest) = internal.strip_prefix("model.") else { return internal.to_string() };
    if let Some(r) = rest.strip_prefix("embed_tokens.") {
        return format!("gpt_neox.embed_in.{r}");
    }
    if let Some(r) = rest.strip_prefix("norm.") {
        return format!("gpt_neox.final_layer_norm.{r}");
    }
    let mut out = format!("gpt_neox.{rest}");
    for (from, to) in RENAMES {
        out = out.replace(to, from);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_round_trip() {
        for hf in [
            "gpt_neox.embed_in.weight",
            "gpt_neox.final_layer_norm.bias",
            "embed_out.weight",
            "gpt_neox.layers.3.attention.query_key_value.weight",
            "gpt_neox.layers.0.mlp.dense_4h_to_h.bias",
            "gpt_neox.layers.1.input_layernorm.weight",
            "score.weight",
        ] {
            assert_eq!(super::hf_name(&super::internal_name(hf)), hf);
        }
        assert_eq!(super::internal_name("gpt_neox.layers.3.attention.dense.weight"), "model.layers.3.self_attn.o_proj.weight");
    }
}
