//! GGUF import: a llama.cpp file to HF-named f32 tensors, an HF `DecoderConfig` and the tokenizer.
//!
//! Read with candle's `gguf_file` reader, dequantized to f32 by candle, then moved to tch. The result
//! equals what transformers loads from the same file (`from_pretrained(dir, gguf_file=..)`,
//! transformers/modeling_gguf_pytorch_utils.py), checked tensor by tensor in tests/it/gguf.rs:
//! - names: `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, etc. (`hf_name`);
//! - shapes: GGUF lists dims innermost first; reversed, they are HF's `(out, in)`;
//! - llama's `attn_q`/`attn_k` rows are un-permuted (`reverse_permute`): llama.cpp's converter
//!   interleaves each head's two rotary halves for its RoPE kernel; HF's `rotate_half` wants them apart.
use crate::error::{Error, Result};
use crate::gguf_meta::{meta_int, meta_str};
use crate::model::arch::Arch;
use crate::model::config::DecoderConfig;
use crate::tokenizer::Tokenizer;
use candle_core::quantized::{gguf_file, GgmlDType};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// A GGUF model, ready for `WeightMap::new(path, tensors)` and `CausalLm::new(&config, ..)`.
pub struct GgufModel {
    pub config: DecoderConfig,
    /// HF-named f32 CPU tensors, in file order.
    pub tensors: Vec<(String, Tensor)>,
    pub tokenizer: Tokenizer,
}

/// The ggml types `load` dequantizes.
pub const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];
const SUPPORTED_NAMES: &str = "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// ggml's name for a type (ggml.h `enum ggml_type`).
fn ggml_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// ggml type ids that candle's reader does not know (it refuses the whole header on them).
fn ggml_name_of_id(id: u32) -> &'static str {
    match id {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => "unknown",
    }
}

/// Maps a GGUF tensor name to its HF name under architecture `arch`; `None` for a name r2m does
/// not know. The norms differ by family: llama.cpp's `ffn_norm` is the pre-MLP norm, which Llama
/// calls `post_attention_layernorm` and Gemma `pre_feedforward_layernorm`; Gemma's and OLMo 2's
/// `post_attention_norm` is HF's `post_attention_layernorm`.
pub fn hf_name(gguf: &str, arch: Arch) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output_norm.bias" => Some("model.norm.bias"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, suffix) = rest.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let gemma = matches!(arch, Arch::Gemma2 | Arch::Gemma3);
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" if matches!(arch, Arch::Phi3 | Arch::GptNeox) => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if arch == Arch::Phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// llama.cpp's `general.architecture` names r2m reads, and the architecture of each.
fn arch_of(name: &str) -> Option<Arch> {
    Some(match name {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma2" => Arch::Gemma2,
        "gemma3" => Arch::Gemma3,
        "olmo2" => Arch::Olmo2,
        "phi3" => Arch::Phi3,
        "gptneox" => Arch::GptNeox,
        _ => return None,
    })
}
const GGUF_ARCHS: &str = "llama, qwen2, qwen3, gemma2, gemma3, olmo2, phi3, gptneox";

/// llama.cpp's converter stores GPT-NeoX's fused projection as [q; k; v] (all heads of each);
/// HF keeps each head's q, k, v together. Rows (3, heads, hd) back to (heads, 3, hd).
fn neox_qkv_to_hf(t: &Tensor, n_head: i64) -> Result<Tensor> {
    let shape = t.size();
    let hd = shape[0] / 3 / n_head;
    let mut v = vec![3, n_head, hd];
    v.extend(&shape[1..]);
    Ok(t.f_reshape(&v)?.f_transpose(0, 1)?.f_reshape(&shape)?)
}

/// Undoes llama.cpp's `permute` of q/k rows (convert_hf_to_gguf.py), as transformers'
/// `LlamaTensorProcessor._reverse_permute_weights`: rows (n_head, 2, hd/2) were stored as
/// (n_head, hd/2, 2). Works for weights (rows, in) and biases (rows,).
pub fn reverse_permute(t: &Tensor, n_head: i64) -> Result<Tensor> {
    let shape = t.size();
    let rows = shape[0];
    let rest: Vec<i64> = shape[1..].to_vec();
    let mut v = vec![n_head, rows / n_head / 2, 2];
    v.extend(&rest);
    Ok(t.f_reshape(&v)?.f_transpose(1, 2)?.f_reshape(&shape)?)
}

/// candle's error message without the backtrace candle attaches when `RUST_BACKTRACE` is set.
fn candle_msg(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_msg(*inner),
        e => e.to_string(),
    }
}

pub(crate) fn candle_err(path: &Path, e: candle_core::Error) -> Error {
    let msg = candle_msg(e);
    // candle refuses ggml types it does not know while reading the header, before any tensor name.
    if let Some(id) = msg.strip_prefix("unknown dtype for tensor ").and_then(|s| s.trim().parse::<u32>().ok()) {
        return Error::Unsupported {
            path: path.into(),
            what: "ggml tensor type".into(),
            value: format!("{} (type id {id})", ggml_name_of_id(id)),
            supported: SUPPORTED_NAMES.into(),
        };
    }
    Error::parse(path, msg)
}

/// Reads only the GGUF header of `path` and builds its tokenizer ([`Tokenizer::from_gguf`]).
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
    super::gguf_check::check(path)?;
    let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
    let content = gguf_file::Content::read(&mut f).map_err(|e| candle_err(path, e))?;
    Tokenizer::from_gguf(path, &content.metadata)
}

/// Loads a GGUF file: config, HF-named f32 tensors, tokenizer. Architectures: `GGUF_ARCHS`.
pub fn load(path: &Path) -> Result<GgufModel> {
    super::gguf_check::check(path)?;
    let file_len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| candle_err(path, e))?;
    let md = &content.metadata;

    let arch = md.get("general.architecture").ok_or_else(|| Error::parse(path, "GGUF metadata has no 'general.architecture'"))?;
    let arch = meta_str(path, "general.architecture", arch)?.to_string();
    let kind = arch_of(&arch).ok_or_else(|| Error::Unsupported {
        path: path.into(),
        what: "GGUF architecture (general.architecture)".into(),
        value: arch.clone(),
        supported: GGUF_ARCHS.into(),
    })?;

    // Tensors in file order; every name and type checked before any is dequantized.
    let mut infos: Vec<(&String, &gguf_file::TensorInfo)> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    let mut plan = Vec::with_capacity(infos.len());
    for (name, info) in &infos {
        if !SUPPORTED_TYPES.contains(&info.ggml_dtype) {
            return Err(Error::Unsupported {
                path: path.into(),
                what: format!("ggml type of tensor '{name}'"),
                value: ggml_name(info.ggml_dtype).into(),
                supported: SUPPORTED_NAMES.into(),
            });
        }
        // Its data must lie inside the file (the header's dims and offset are the file's word).
        let elems = info.shape.elem_count() as u64;
        let (block, size) = (info.ggml_dtype.block_size() as u64, info.ggml_dtype.type_size() as u64);
        let end = (elems / block.max(1))
            .checked_mul(size)
            .and_then(|b| b.checked_add(info.offset))
            .and_then(|b| b.checked_add(content.tensor_data_offset));
        // (An empty tensor is refused too: no model has one, and candle's reader mishandles it.)
        if elems == 0 || elems % block.max(1) != 0 || end.is_none_or(|e| e > file_len) {
            return Err(Error::parse(
                path,
                format!(
                    "tensor '{name}': {:?} ({elems} elements) at offset {} reaches past the end of the file ({file_len} bytes)",
                    info.shape.dims(),
                    info.offset
                ),
            ));
        }
        // llama.cpp stores precomputed Llama 3.1 RoPE frequencies; transformers ignores them too.
        if name.as_str() == "rope_freqs.weight" {
            continue;
        }
        let hf = hf_name(name, kind).ok_or_else(|| Error::Unsupported {
            path: path.into(),
            what: "GGUF tensor".into(),
            value: (*name).clone(),
            supported: "token_embd, output_norm, output, blk.N.{attn_q,attn_k,attn_v,attn_qkv,attn_output,attn_q_norm,attn_k_norm,\
                        ffn_gate,ffn_up,ffn_down,attn_norm,ffn_norm,post_attention_norm,post_ffw_norm}"
                .into(),
        })?;
        plan.push((*name, *info, hf));
    }

    let tokenizer = Tokenizer::from_gguf(path, md)?;
    let has = |n: &str| content.tensor_infos.contains_key(n);
    let config = config_from_metadata(path, md, &arch, kind, &tokenizer, &has)?;

    let n_head = config.num_attention_heads;
    let n_kv = config.n_kv_heads();
    let mut tensors = Vec::with_capacity(plan.len());
    for (name, info, hf) in plan {
        let q = info
            .read(&mut reader, content.tensor_data_offset, &candle_core::Device::Cpu)
            .map_err(|e| Error::parse(path, format!("tensor '{name}': {}", candle_msg(e))))?;
        let dims: Vec<i64> = q.shape().dims().iter().map(|d| *d as i64).collect();
        let data = q
            .dequantize(&candle_core::Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::parse(path, format!("dequantizing tensor '{name}': {}", candle_msg(e))))?;
        let mut t = Tensor::f_from_slice(&data)?.f_reshape(&dims)?.f_to_kind(Kind::Float)?;
        if kind == Arch::Llama {
            if name.contains(".attn_q.") {
                t = reverse_permute(&t, n_head)?;
            } else if name.contains(".attn_k.") {
                t = reverse_permute(&t, n_kv)?;
            }
        }
        if kind == Arch::GptNeox && name.contains(".attn_qkv.") {
            t = neox_qkv_to_hf(&t, n_head)?;
        }
        // llama.cpp stores Gemma's norm weights as 1 + w (its norm scales by w); HF's by 1 + w.
        if matches!(kind, Arch::Gemma2 | Arch::Gemma3) && name.ends_with("norm.weight") {
            t = t - 1.0;
        }
        tensors.push((hf, t));
    }
    Ok(GgufModel { config, tensors, tokenizer })
}

/// `DecoderConfig` from `{arch}.*` metadata, as transformers' GGUF_CONFIG_MAPPING derives it (the
/// fields GGUF does not carry take the config class's defaults, as there).
fn config_from_metadata(
    path: &Path,
    md: &HashMap<String, gguf_file::Value>,
    arch: &str,
    kind: Arch,
    tok: &Tokenizer,
    has_tensor: &dyn Fn(&str) -> bool,
) -> Result<DecoderConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| -> Result<Option<i64>> { md.get(&key(k)).map(|v| meta_int(path, &key(k), v)).transpose() };
    let req = |k: &str| -> Result<i64> { int(k)?.ok_or_else(|| Error::parse(path, format!("GGUF metadata has no '{}'", key(k)))) };
    let float = |k: &str| -> Result<Option<f64>> {
        use gguf_file::Value as V;
        match md.get(&key(k)) {
            None => Ok(None),
            Some(V::F32(x)) => Ok(Some(*x as f64)),
            Some(V::F64(x)) => Ok(Some(*x)),
            Some(v) => meta_int(path, &key(k), v).map(|i| Some(i as f64)),
        }
    };
    let n_head = req("attention.head_count")?;
    // transformers maps llama's rope.dimension_count to head_dim (not for the others).
    let head_dim = match int("attention.key_length")? {
        Some(h) => Some(h),
        None if kind == Arch::Llama => int("rope.dimension_count")?,
        None => None,
    };
    // transformers: `{arch}.vocab_size`, else the length of the token list.
    let n_tokens = match md.get("tokenizer.ggml.tokens") {
        Some(v) => v.to_vec().map(|a| a.len() as i64).ok(),
        None => None,
    };
    let vocab_size = match int("vocab_size")?.or(n_tokens) {
        Some(v) => v,
        None => tok.vocab_size() as i64,
    };
    let id = |k: &str| -> Result<Option<i64>> {
        md.get(k).map(|v| meta_int(path, k, v)).transpose().map(|v| v.filter(|i| *i >= 0 && *i < u32::MAX as i64))
    };
    let mut c = serde_json::json!({
        "architectures": [kind.causal_lm_class()],
        "model_type": kind.model_type(),
        "vocab_size": vocab_size,
        "hidden_size": req("embedding_length")?,
        "intermediate_size": req("feed_forward_length")?,
        "num_hidden_layers": req("block_count")?,
        "num_attention_heads": n_head,
        "num_key_value_heads": int("attention.head_count_kv")?.unwrap_or(n_head),
        "rope_theta": float("rope.freq_base")?.unwrap_or(10_000.0),
        "max_position_embeddings": int("context_length")?.unwrap_or(2048),
        "tie_word_embeddings": !has_tensor("output.weight"),
    });
    let o = c.as_object_mut().expect("an object");
    let mut set = |k: &str, v: Option<serde_json::Value>| {
        if let Some(v) = v {
            o.insert(k.into(), v);
        }
    };
    set("head_dim", head_dim.map(Into::into));
    if kind == Arch::GptNeox {
        set("layer_norm_eps", Some(float("attention.layer_norm_epsilon")?.unwrap_or(1e-5).into()));
        set("use_parallel_residual", md.get(&key("use_parallel_residual")).map(|v| matches!(v, gguf_file::Value::Bool(true)).into()));
        if let Some(rot) = int("rope.dimension_count")? {
            set("rotary_pct", Some((rot as f64 / (req("embedding_length")? / n_head) as f64).into()));
        }
        set("attention_bias", Some(has_tensor("blk.0.attn_qkv.bias").into()));
    } else {
        set("rms_norm_eps", Some(float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6).into()));
    }
    set("bos_token_id", id("tokenizer.ggml.bos_token_id")?.map(Into::into));
    set("eos_token_id", id("tokenizer.ggml.eos_token_id")?.map(Into::into));
    set("pad_token_id", id("tokenizer.ggml.padding_token_id")?.map(Into::into));
    // Biases are there or not (config classes with an `attention_bias` switch).
    if matches!(kind, Arch::Llama | Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3 | Arch::Olmo2) {
        set("attention_bias", Some(has_tensor("blk.0.attn_q.bias").into()));
    }
    if matches!(kind, Arch::Gemma2 | Arch::Gemma3 | Arch::Phi3) {
        set("sliding_window", int("attention.sliding_window")?.map(Into::into));
    }
    if matches!(kind, Arch::Gemma2 | Arch::Gemma3) {
        // llama.cpp scales scores by head_dim^-1/2, by (hidden / heads)^-1/2 for the 27B models
        // (46 layers in Gemma 2, 62 in Gemma 3); GGUF keeps no query_pre_attn_scalar.
        let layers = req("block_count")?;
        let hd = head_dim.unwrap_or(req("embedding_length")? / n_head);
        let big = (kind == Arch::Gemma2 && layers == 46) || (kind == Arch::Gemma3 && layers == 62);
        set("query_pre_attn_scalar", Some(if big { req("embedding_length")? / n_head } else { hd }.into()));
        for k in ["attn_logit_softcapping", "final_logit_softcapping"] {
            match float(k)? {
                Some(cap) => set(k, Some(cap.into())),
                // Gemma 3's converter writes none: its classes' default is no capping.
                None if kind == Arch::Gemma3 => set(k, Some(serde_json::Value::Null)),
                None => {}
            }
        }
        // Every 6th Gemma 3 layer is global unless the file says otherwise.
        set("sliding_window_pattern", int("attention.sliding_window_pattern")?.filter(|_| kind == Arch::Gemma3).map(Into::into));
        if let Some(v) = md.get(&key("rope.scaling.type")) {
            let ty = meta_str(path, &key("rope.scaling.type"), v)?;
            let factor = float("rope.scaling.factor")?.unwrap_or(1.0);
            set("rope_scaling", Some(serde_json::json!({"rope_type": ty, "factor": factor})));
        }
    }
    if kind == Arch::Phi3 {
        // Partial rotary: llama.cpp writes the rotated dims.
        if let (Some(rot), Some(hd)) = (int("rope.dimension_count")?, head_dim.or(Some(req("embedding_length")? / n_head))) {
            set("partial_rotary_factor", Some((rot as f64 / hd as f64).into()));
        }
    }
    DecoderConfig::from_json(c, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use gguf_file::Value as V;

    #[test]
    fn maps_gguf_names_to_hf() {
        let l = Arch::Llama;
        assert_eq!(hf_name("token_embd.weight", l).unwrap(), "model.embed_tokens.weight");
        assert_eq!(hf_name("blk.12.attn_q.bias", l).unwrap(), "model.layers.12.self_attn.q_proj.bias");
        assert_eq!(hf_name("blk.0.ffn_norm.weight", l).unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("blk.3.attn_output.weight", l).unwrap(), "model.layers.3.self_attn.o_proj.weight");
        assert!(hf_name("blk.x.attn_q.weight", l).is_none());
        assert!(hf_name("blk.0.ffn_gate_exps.weight", l).is_none());
        // Gemma's ffn_norm is the norm before the MLP; its post-attention norm has its own name.
        let g = Arch::Gemma3;
        assert_eq!(hf_name("blk.0.ffn_norm.weight", g).unwrap(), "model.layers.0.pre_feedforward_layernorm.weight");
        assert_eq!(hf_name("blk.0.post_attention_norm.weight", g).unwrap(), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(hf_name("blk.1.attn_k_norm.weight", g).unwrap(), "model.layers.1.self_attn.k_norm.weight");
        assert_eq!(hf_name("blk.1.ffn_up.weight", Arch::Phi3).unwrap(), "model.layers.1.mlp.gate_up_proj.weight");
    }

    /// llama.cpp's `permute` (convert_hf_to_gguf.py `LlamaModel.permute`), to check the inverse.
    fn permute(t: &Tensor, n_head: i64) -> Tensor {
        let s = t.size();
        let mut v = vec![n_head, 2, s[0] / n_head / 2];
        v.extend(&s[1..]);
        t.reshape(&v).transpose(1, 2).reshape(&s)
    }

    #[test]
    fn reverse_permute_undoes_llama_cpp_permute() {
        let w = Tensor::arange(4 * 8 * 3, (Kind::Float, tch::Device::Cpu)).view([32, 3]);
        let back = reverse_permute(&permute(&w, 4), 4).unwrap();
        assert!(back.equal(&w));
        // Head 0's rows (hd = 8) after llama.cpp's permute: 0 4 1 5 2 6 3 7.
        let rows = permute(&w, 4).select(1, 0).narrow(0, 0, 8) / 3.0;
        assert_eq!(Vec::<f32>::try_from(&rows).unwrap(), vec![0., 4., 1., 5., 2., 6., 3., 7.]);
        let b = Tensor::arange(16, (Kind::Float, tch::Device::Cpu));
        assert!(reverse_permute(&permute(&b, 2), 2).unwrap().equal(&b));
    }

    /// Writes a tiny llama GGUF (2 heads, 1 kv head, d 8, 1 layer) with candle's writer.
    fn write_tiny(path: &Path, arch: &str, qtype: GgmlDType) {
        let dev = candle_core::Device::Cpu;
        let mut tokens: Vec<V> = (0..32u8).map(|i| V::String(format!("t{i}"))).collect();
        tokens[0] = V::String("<s>".into());
        tokens[1] = V::String("t".into());
        tokens[2] = V::String("1".into());
        tokens[3] = V::String("t1".into());
        let types: Vec<V> = (0..32).map(|i| V::I32(if i == 0 { 3 } else { 1 })).collect();
        let md: Vec<(String, V)> = vec![
            ("general.architecture".into(), V::String(arch.into())),
            (format!("{arch}.block_count"), V::U32(1)),
            (format!("{arch}.context_length"), V::U32(128)),
            (format!("{arch}.embedding_length"), V::U32(32)),
            (format!("{arch}.feed_forward_length"), V::U32(64)),
            (format!("{arch}.attention.head_count"), V::U32(2)),
            (format!("{arch}.attention.head_count_kv"), V::U32(1)),
            (format!("{arch}.attention.layer_norm_rms_epsilon"), V::F32(1e-5)),
            (format!("{arch}.rope.freq_base"), V::F32(10000.0)),
            ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
            ("tokenizer.ggml.tokens".into(), V::Array(tokens)),
            ("tokenizer.ggml.token_type".into(), V::Array(types)),
            ("tokenizer.ggml.merges".into(), V::Array(vec![V::String("t 1".into())])),
            ("tokenizer.ggml.bos_token_id".into(), V::U32(0)),
            ("tokenizer.ggml.eos_token_id".into(), V::U32(0)),
        ];
        let mk = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect();
            candle_core::Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let q = |t: candle_core::Tensor, dt| QTensor::quantize(&t, dt).unwrap();
        let tensors: Vec<(String, QTensor)> = vec![
            ("token_embd.weight".into(), q(mk(&[32, 32], 0.1), GgmlDType::F32)),
            ("output_norm.weight".into(), q(mk(&[32], 0.2), GgmlDType::F32)),
            ("blk.0.attn_norm.weight".into(), q(mk(&[32], 0.3), GgmlDType::F32)),
            ("blk.0.ffn_norm.weight".into(), q(mk(&[32], 0.4), GgmlDType::F32)),
            ("blk.0.attn_q.weight".into(), q(mk(&[32, 32], 0.5), qtype)),
            ("blk.0.attn_k.weight".into(), q(mk(&[16, 32], 0.6), GgmlDType::F32)),
            ("blk.0.attn_v.weight".into(), q(mk(&[16, 32], 0.7), GgmlDType::F32)),
            ("blk.0.attn_output.weight".into(), q(mk(&[32, 32], 0.8), GgmlDType::F32)),
            ("blk.0.ffn_gate.weight".into(), q(mk(&[64, 32], 0.9), GgmlDType::F32)),
            ("blk.0.ffn_up.weight".into(), q(mk(&[64, 32], 1.0), GgmlDType::F32)),
            ("blk.0.ffn_down.weight".into(), q(mk(&[32, 64], 1.1), GgmlDType::F32)),
        ];
        let mut f = std::fs::File::create(path).unwrap();
        let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("r2m-gguf-unit-{}-{name}", std::process::id()))
    }

    #[test]
    fn loads_a_tiny_llama_gguf() {
        let p = tmp("tiny.gguf");
        write_tiny(&p, "llama", GgmlDType::F32);
        let g = load(&p).unwrap();
        std::fs::remove_file(&p).ok();
        let c = &g.config;
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (32, 64, 1));
        assert_eq!((c.num_attention_heads, c.n_kv_heads(), c.vocab_size), (2, 1, 32));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.max_position_embeddings, 128);
        assert_eq!(c.architectures, vec!["LlamaForCausalLM".to_string()]);
        let names: Vec<&str> = g.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 11);
        assert!(names.contains(&"model.layers.0.mlp.down_proj.weight"));
        let get = |n: &str| &g.tensors.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(get("model.layers.0.mlp.down_proj.weight").size(), vec![32, 64]);
        assert_eq!(get("model.layers.0.self_attn.k_proj.weight").size(), vec![16, 32]);
        // q was stored as is (not permuted by a converter), so loading permutes it back.
        let stored = Tensor::from_slice(&(0..32 * 32).map(|i| (i as f32 * 0.37 + 0.5).sin()).collect::<Vec<_>>()).view([32, 32]);
        assert!(get("model.layers.0.self_attn.q_proj.weight").allclose(&reverse_permute(&stored, 2).unwrap(), 0.0, 0.0, false));
    }

    #[test]
    fn refuses_unsupported_quant_and_architecture_by_name() {
        let p = tmp("q8_1.gguf");
        write_tiny(&p, "llama", GgmlDType::Q8_1);
        let e = load(&p).err().unwrap().to_string();
        std::fs::remove_file(&p).ok();
        assert!(e.contains("blk.0.attn_q.weight") && e.contains("Q8_1") && e.contains("Q4_K"), "{e}");
        let p = tmp("mamba.gguf");
        write_tiny(&p, "mamba", GgmlDType::F32);
        let e = load(&p).err().unwrap().to_string();
        std::fs::remove_file(&p).ok();
        assert!(e.contains("mamba") && e.contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let e = load(Path::new("/nonexistent/m.gguf")).err().unwrap();
        assert!(matches!(e, Error::NotFound { .. }) && e.to_string().contains("/nonexistent/m.gguf"), "{e}");
    }
}
