//! OLMo 2: no norm before attention or MLP; RMSNorm on their outputs before each residual add
//! (`post_attention_layernorm`, `post_feedforward_layernorm`); RMSNorm over the whole q and k
//! projections (all heads together) before RoPE.
use super::{base_layout, head_dim, Act, BlockKind, Fields, Layout, QkNorm, RopeSpec};
use crate::error::Result;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = head_dim(f)?;
    let rope = RopeSpec { theta: f.float("rope_theta")?.unwrap_or(10_000.0), scaling: f.rope_scaling()?, rotary_dim: hd };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-5), rope);
    l.act = Act::parse(f, "hidden_act", "silu")?;
    l.block = BlockKind::PostNorm;
    l.qk_norm = QkNorm::Whole;
    let bias = f.bool("attention_bias")?.unwrap_or(false);
    (l.qkv_bias, l.o_bias) = (bias, bias);
    f.no_dropout("attention_dropout")?;
    Ok(l)
}
