//! Qwen3: Qwen2's decoder with RMSNorm on each head's queries and keys (before RoPE), biases
//! switched by `attention_bias` (o_proj included), and `head_dim` defaulting to 128.
use super::{base_layout, llama::qwen_window, Act, Fields, Layout, QkNorm, RopeSpec};
use crate::error::Result;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = f.int("head_dim")?.unwrap_or(128);
    let rope = RopeSpec { theta: f.float("rope_theta")?.unwrap_or(10_000.0), scaling: f.rope_scaling()?, rotary_dim: hd };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-6), rope);
    l.act = Act::parse(f, "hidden_act", "silu")?;
    l.qk_norm = QkNorm::PerHead;
    let bias = f.bool("attention_bias")?.unwrap_or(false);
    (l.qkv_bias, l.o_bias) = (bias, bias);
    f.no_dropout("attention_dropout")?;
    (l.sliding_window, l.layer_types) = qwen_window(f, f.req_int("num_hidden_layers")?)?;
    l.head_dim = Some(hd);
    Ok(l)
}
