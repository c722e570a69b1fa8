//! Phi-3: the Llama block with fused projections (`qkv_proj` rows [q; k; v], `gate_up_proj` rows
//! [gate; up]), optional partial rotary (`partial_rotary_factor`), LongRoPE scaling (`longrope`,
//! formerly `su`/`yarn`: per-frequency short and long factors and an attention factor), and an
//! optional sliding window on every layer.
use super::{base_layout, head_dim, Act, Fields, LayerType, Layout, MlpKind, QkvKind, RopeScaling, RopeSpec};
use crate::error::{Error, Result};
use serde_json::Value;

pub fn resolve(f: &Fields) -> Result<Layout> {
    let hd = head_dim(f)?;
    let rotary_dim = (hd as f64 * f.float("partial_rotary_factor")?.unwrap_or(1.0)) as i64;
    let theta = f.float("rope_theta")?.unwrap_or(10_000.0);
    let rope = RopeSpec { theta, scaling: longrope(f, rotary_dim)?, rotary_dim };
    let mut l = base_layout(f.float("rms_norm_eps")?.unwrap_or(1e-5), rope);
    l.act = Act::parse(f, "hidden_act", "silu")?;
    l.qkv = QkvKind::Fused;
    l.mlp = MlpKind::GatedFused;
    for k in ["attention_dropout", "resid_pdrop", "embd_pdrop"] {
        f.no_dropout(k)?;
    }
    l.sliding_window = f.int("sliding_window")?;
    if l.sliding_window.is_some() {
        l.layer_types = vec![LayerType::Sliding; f.req_int("num_hidden_layers")? as usize];
    }
    Ok(l)
}

/// `rope_scaling` of type longrope (or its old names); the factor is
/// max_position_embeddings / original_max_position_embeddings, as transformers computes it.
fn longrope(f: &Fields, rotary_dim: i64) -> Result<Option<RopeScaling>> {
    let original = f.int("original_max_position_embeddings")?;
    let Some(v) = f.take("rope_scaling") else { return Ok(None) };
    let o = v.as_object().ok_or_else(|| f.refuse("rope_scaling", v, "expected an object"))?;
    let ty = o.get("rope_type").or_else(|| o.get("type")).and_then(Value::as_str).unwrap_or("");
    if !matches!(ty, "longrope" | "su" | "yarn") {
        return Err(Error::Unsupported {
            path: f.path.into(),
            what: "rope_scaling.type".into(),
            value: ty.into(),
            supported: "longrope".into(),
        });
    }
    let factors = |k: &str| -> Result<Vec<f64>> {
        let list = o.get(k).and_then(Value::as_array).and_then(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<f64>>>());
        match list {
            Some(l) if l.len() as i64 == rotary_dim / 2 => Ok(l),
            _ => Err(Error::parse(f.path, format!("field rope_scaling.{k} must be a list of {} numbers", rotary_dim / 2))),
        }
    };
    let max_pos = f.int("max_position_embeddings")?.unwrap_or(4096);
    let original = original.unwrap_or(max_pos);
    let factor = max_pos as f64 / original as f64;
    let attention_factor = match o.get("attention_factor").and_then(Value::as_f64) {
        Some(a) => a,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(Some(RopeScaling::LongRope {
        short: factors("short_factor")?,
        long: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    }))
}
