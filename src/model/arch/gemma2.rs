//! Gemma 2: embeddings scaled by sqrt(hidden_size); Gemma's RMSNorm (x * (1 + w)) before and after
//! both attention and MLP; scores scaled by `query_pre_attn_scalar`^-1/2 and soft-capped
//! (`attn_logit_softcapping`), logits too (`final_logit_softcapping`); gelu-tanh gated MLP; sliding
//! and global layers alternating (layer 0 slides).
use super::{base_layout, Act, BlockKind, Fields, LayerType, Layout, NormKind, RopeSpec};
use crate::error::Result;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = f.int("head_dim")?.unwrap_or(256);
    let rope = RopeSpec { theta: f.float("rope_theta")?.unwrap_or(10_000.0), scaling: None, rotary_dim: hd };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-6), rope);
    gemma_common(f, &mut l)?;
    l.attn_softcap = softcap(f, "attn_logit_softcapping", Some(50.0))?;
    l.final_softcap = softcap(f, "final_logit_softcapping", Some(30.0))?;
    l.sliding_window = Some(f.int("sliding_window")?.unwrap_or(4096));
    let n = f.req_int("num_hidden_layers")?;
    l.layer_types = f.layer_types(n, |i| if (i + 1) % 2 != 0 { LayerType::Sliding } else { LayerType::Full })?;
    l.head_dim = Some(hd);
    Ok(l)
}

/// What Gemma 2 and 3 share: norms, block, activation, scaled embeddings, the query scalar, biases.
pub fn gemma_common(f: &Fields, l: &mut Layout) -> Result<()> {
    l.norm = NormKind::RmsOffset;
    l.block = BlockKind::Sandwich;
    // transformers' Gemma MLP reads `hidden_activation`; `hidden_act` is a leftover it ignores.
    f.take("hidden_act");
    l.act = Act::parse(f, "hidden_activation", "gelu_pytorch_tanh")?;
    l.embed_scale = Some((f.req_int("hidden_size")? as f64).sqrt());
    l.attn_scale = Some(f.float("query_pre_attn_scalar")?.unwrap_or(256.0).powf(-0.5));
    let bias = f.bool("attention_bias")?.unwrap_or(false);
    (l.qkv_bias, l.o_bias) = (bias, bias);
    f.no_dropout("attention_dropout")?;
    l.tie_default = true;
    Ok(())
}

/// A soft-capping value: absent = the class default, null = none.
pub fn softcap(f: &Fields, key: &str, default: Option<f64>) -> Result<Option<f64>> {
    match f.map.get(key) {
        None => Ok(default),
        Some(_) => f.float(key),
    }
}
