//! Gemma 3 (text, `gemma3_text`): Gemma 2's blocks with Gemma-RMSNorm on each head's queries and
//! keys, no attention soft-capping by default, and two rotary embeddings: `rope_theta` (with
//! `rope_scaling`) on the global layers, `rope_local_base_freq` unscaled on the sliding ones.
//! Every `sliding_window_pattern`-th layer is global (5 sliding : 1 global by default).
use super::{base_layout, gemma2, Fields, LayerType, Layout, QkNorm, RopeSpec};
use crate::error::Result;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = f.int("head_dim")?.unwrap_or(256);
    let rope = RopeSpec { theta: f.float("rope_theta")?.unwrap_or(1_000_000.0), scaling: f.rope_scaling()?, rotary_dim: hd };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-6), rope);
    gemma2::gemma_common(f, &mut l)?;
    l.qk_norm = QkNorm::PerHead;
    l.rope_local = Some(RopeSpec { theta: f.float("rope_local_base_freq")?.unwrap_or(10_000.0), scaling: None, rotary_dim: hd });
    l.attn_softcap = gemma2::softcap(f, "attn_logit_softcapping", None)?;
    l.final_softcap = gemma2::softcap(f, "final_logit_softcapping", None)?;
    if let Some(v) = f.take("use_bidirectional_attention").filter(|v| v.as_bool() != Some(false)) {
        return Err(f.refuse("use_bidirectional_attention", v, "bidirectional attention is not implemented (r2m's decoders are causal)"));
    }
    l.sliding_window = Some(f.int("sliding_window")?.unwrap_or(4096));
    let pattern = f.int("sliding_window_pattern")?.or(f.int("_sliding_window_pattern")?).unwrap_or(6);
    let n = f.req_int("num_hidden_layers")?;
    l.layer_types = f.layer_types(n, |i| if (i + 1) % pattern != 0 { LayerType::Sliding } else { LayerType::Full })?;
    l.head_dim = Some(hd);
    Ok(l)
}
