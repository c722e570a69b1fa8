//! Llama (2, 3, 3.1+ with `llama3` rope scaling), Mistral and Qwen2: pre-norm blocks, RMSNorm,
//! gated MLP, RoPE over the whole head. Qwen2 adds q/k/v biases; Mistral and Qwen2 may attend
//! through a sliding window (Mistral on every layer; Qwen2 from layer `max_window_layers` on, when
//! `use_sliding_window`).
use super::{base_layout, head_dim, Act, Arch, Fields, LayerType, Layout, RopeSpec};
use crate::error::{Error, Result};

pub fn resolve(arch: Arch, f: &Fields) -> Result<Layout> {
    let hd = head_dim(f)?;
    let rope = RopeSpec { theta: f.float("rope_theta")?.unwrap_or(10_000.0), scaling: f.rope_scaling()?, rotary_dim: hd };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-6), rope);
    l.act = Act::parse(f, "hidden_act", "silu")?;
    f.no_dropout("attention_dropout")?;
    let n = f.req_int("num_hidden_layers")?;
    match arch {
        Arch::Llama => {
            let bias = f.bool("attention_bias")?.unwrap_or(false);
            (l.qkv_bias, l.o_bias) = (bias, bias);
        }
        Arch::Mistral => {
            l.sliding_window = f.int("sliding_window")?;
            if l.sliding_window.is_some() {
                l.layer_types = vec![LayerType::Sliding; n as usize];
            }
        }
        _ => {
            l.qkv_bias = true;
            (l.sliding_window, l.layer_types) = qwen_window(f, n)?;
        }
    }
    Ok(l)
}

/// Qwen2's and Qwen3's window: `sliding_window` counts only with `use_sliding_window`; the layers
/// from `max_window_layers` on slide, unless `layer_types` lists them.
pub fn qwen_window(f: &Fields, n: i64) -> Result<(Option<i64>, Vec<LayerType>)> {
    let on = f.bool("use_sliding_window")?.unwrap_or(false);
    let window = f.int("sliding_window")?.filter(|_| on);
    let max_full = f.int("max_window_layers")?.unwrap_or(28);
    let types = f.layer_types(n, |i| if window.is_some() && i >= max_full { LayerType::Sliding } else { LayerType::Full })?;
    if window.is_none() && types.contains(&LayerType::Sliding) {
        return Err(Error::parse(f.path, "layer_types has sliding_attention layers but there is no window (use_sliding_window is false)"));
    }
    Ok((window, types))
}
