//! The BERT encoder and sentence-transformers pooling against `SentenceTransformer(dir).encode`
//! (all-MiniLM-L6-v2), and the errors for broken folders.
use crate::common;
use r2m::model::sentence::SentenceEncoder;
use r2m::tch::{Device, Kind, Tensor};
use std::path::Path;

const REF: &str = r#"
import json, sys
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], device='cpu')
texts = json.loads(sys.argv[2])
emb = m.encode(texts, convert_to_numpy=True)
ntok = [len(m.tokenize([t])['input_ids'][0]) for t in texts]
print(json.dumps({"emb": emb.tolist(), "ntok": ntok}))
"#;

fn texts() -> Vec<String> {
    let para = "Reinforcement learning from human feedback trains a reward model on preference pairs \
                and then optimises a policy against it, with a KL penalty keeping the policy close \
                to its reference; reward hacking appears when the policy drifts to regions where the \
                proxy reward no longer tracks the gold one.";
    vec![
        "Hello world".into(),
        String::new(),
        "   Leading and trailing whitespace, MiXeD CaSe!   ".into(),
        "Ünïcödé café — naïve 日本語のテキスト 🚀 Ελληνικά".into(),
        "The quick brown fox jumps over the lazy dog.".into(),
        "1234 5678 $%^& numbers and symbols: 3.14159, e=mc^2".into(),
        // ~180 tokens: longer than tokenizer.json's 128, shorter than max_seq_length 256.
        format!("{para} {para} {para}"),
        // > 256 tokens: truncated at max_seq_length.
        [para; 8].join(" "),
        "A man is eating food.".into(),
    ]
}

fn to_vec2(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float);
    let (n, d) = t.size2().unwrap();
    let flat: Vec<f32> = Vec::try_from(t.reshape([-1])).unwrap();
    assert_eq!(flat.len() as i64, n * d);
    flat.chunks(d as usize).map(|r| r.to_vec()).collect()
}

/// Asserts 1 - cos <= 1e-5 and max |diff| <= 1e-4 per text; returns the worst of each.
fn compare(got: &[Vec<f32>], want: &[Vec<f32>], texts: &[String]) -> (f64, f32) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0f64, 0f32);
    for ((g, w), text) in got.iter().zip(want).zip(texts) {
        assert_eq!(g.len(), w.len());
        let dot: f64 = g.iter().zip(w).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let ng: f64 = g.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let nw: f64 = w.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
        let cos_err = 1.0 - dot / (ng * nw);
        let max_abs = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let short: String = text.chars().take(30).collect();
        assert!(cos_err <= 1e-5, "{short:?}: 1 - cos = {cos_err:e}");
        assert!(max_abs <= 1e-4, "{short:?}: max |diff| = {max_abs:e}");
        worst = (worst.0.max(cos_err), worst.1.max(max_abs));
    }
    worst
}

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = r2m::paths::minilm_dir();
    let texts = texts();
    let json = serde_json::to_string(&texts).unwrap();
    let out = common::python(REF, &[dir.to_str().unwrap(), &json]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(v["emb"].clone()).unwrap();
    let ntok: Vec<i64> = serde_json::from_value(v["ntok"].clone()).unwrap();
    assert!(ntok[6] > 128 && ntok[6] < 256, "medium text has {} tokens", ntok[6]);
    assert_eq!(ntok[7], 256, "long text must be truncated to max_seq_length");

    let mut enc = SentenceEncoder::from_dir(&dir, Device::Cpu).unwrap();
    assert_eq!(enc.embed_dim(), 384);
    assert_eq!(enc.max_seq_length, 256);
    assert!(enc.normalize);
    // Same token counts as sentence-transformers' tokenizer, text by text.
    for (t, n) in texts.iter().zip(&ntok) {
        let (ids, mask) = enc.tokenize(&[t.as_str()]).unwrap();
        assert_eq!(ids.size(), [1, *n], "{t:?}");
        assert_eq!(mask.sum(Kind::Int64).int64_value(&[]), *n);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = enc.encode(&refs).unwrap();
    assert_eq!(got.size(), [texts.len() as i64, 384]);
    assert_eq!(got.kind(), Kind::Float);
    let (cos_err, max_abs) = compare(&to_vec2(&got), &want, &texts);
    eprintln!("all-MiniLM-L6-v2 vs sentence-transformers: max 1 - cos = {cos_err:e}, max |diff| = {max_abs:e}");
    // Smaller batches (more padding patterns) give the same embeddings.
    enc.batch_size = 2;
    compare(&to_vec2(&enc.encode(&refs).unwrap()), &want, &texts);
    assert_eq!(enc.encode(&[]).unwrap().size(), [0, 384]);
    // Under bf16 autocast (model::precision: what a reward model with dtype = "bf16" runs) the
    // embeddings stay within bf16 rounding of the f32 ones: cosine >= 0.995 text by text.
    let bf16 = {
        let _ac = r2m::model::precision::Autocast::new(r2m::model::precision::Precision::Bf16, Device::Cpu);
        enc.encode(&refs).unwrap().to_kind(Kind::Float)
    };
    let want_t = Tensor::from_slice2(&want);
    let cos = (&bf16 * &want_t).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        / (bf16.norm_scalaropt_dim(2, [1i64].as_slice(), false) * want_t.norm_scalaropt_dim(2, [1i64].as_slice(), false));
    let worst = cos.min().double_value(&[]);
    assert!((0.995..1.0 - 1e-7).contains(&worst), "bf16 embeddings: worst cosine {worst}");
}

/// A sentence-transformers folder in `dst` whose files link to all-MiniLM-L6-v2's, except those
/// in `skip`; `config.json` is written through `edit`.
fn linked_copy(dst: &Path, skip: &[&str], edit: impl Fn(&mut serde_json::Value)) {
    let src = r2m::paths::minilm_dir();
    std::fs::create_dir_all(dst.join("1_Pooling")).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json"] {
        if !skip.contains(&f) {
            std::os::unix::fs::symlink(src.join(f), dst.join(f)).unwrap();
        }
    }
    if !skip.contains(&"config.json") {
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
        edit(&mut cfg);
        std::fs::write(dst.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    }
}

#[test]
fn minilm_shape_mismatch_names_tensor_and_shapes() {
    let tmp = common::tmpdir();
    linked_copy(tmp.path(), &[], |c| c["hidden_size"] = 768.into());
    let e = SentenceEncoder::from_dir(tmp.path(), Device::Cpu).err().expect("must fail").to_string();
    let file = tmp.path().join("model.safetensors");
    assert!(e.contains(&file.display().to_string()), "{e}");
    assert!(e.contains("tensor 'embeddings.") && e.contains("[384]") && e.contains("[768]"), "{e}");
}

#[test]
fn minilm_missing_files_are_named() {
    for missing in ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
        let tmp = common::tmpdir();
        linked_copy(tmp.path(), &[missing], |_| {});
        let e = SentenceEncoder::from_dir(tmp.path(), Device::Cpu).err().expect("must fail").to_string();
        let path = tmp.path().join(missing);
        assert!(e.contains(&path.display().to_string()) && e.contains("not found"), "{missing}: {e}");
    }
}

#[test]
fn minilm_unsupported_pooling_names_the_file() {
    let tmp = common::tmpdir();
    linked_copy(tmp.path(), &["1_Pooling/config.json"], |_| {});
    let pooling = tmp.path().join("1_Pooling/config.json");
    std::fs::write(&pooling, r#"{"word_embedding_dimension":384,"pooling_mode_lasttoken":true}"#).unwrap();
    let e = SentenceEncoder::from_dir(tmp.path(), Device::Cpu).err().expect("must fail").to_string();
    assert!(e.contains(&pooling.display().to_string()) && e.contains("pooling_mode_lasttoken"), "{e}");
}
