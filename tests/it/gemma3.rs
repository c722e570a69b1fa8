//! Gemma-3-270M (base, Q4_K_M GGUF) against transformers reading the same file (logits, greedy
//! tokens) and against the SentencePiece library over the file's pieces (tokenizer ids). The file is fetched on demand by `scripts/bootstrap.sh --gemma3` (241 MB),
//! so these tests are ignored by default:
//!
//! ```sh
//! scripts/bootstrap.sh --gemma3 && cargo test --release --test it -- --ignored gemma3_270m
//! ```
use crate::common::python;
use r2m::model::causal_lm::CausalLm;
use r2m::model::generate::{generate, GenerateConfig, Sampling};
use tch::{Device, Kind, Tensor};

const TEXTS: &[&str] = &["The capital of France is", "def fibonacci(n):\n\treturn n\n\n", "ünïcode, 数字 123 and 🙂!"];

/// argv: the GGUF file, texts (JSON): prints the SentencePiece ids of each text (a BPE model built
/// from the file's pieces, scores and types), the logits of transformers' model (dequantized to f32
/// by its GGUF loader) on the first text with BOS, and its greedy continuation.
const REF_PY: &str = r#"
import sys, os, json, torch, gguf, sentencepiece as spm, transformers as T
from sentencepiece import sentencepiece_model_pb2 as pb
path, texts = sys.argv[1], json.loads(sys.argv[2])
f = gguf.GGUFReader(path).fields
field = lambda k: [f[k].parts[i] for i in f[k].data]
mp = pb.ModelProto()
mp.trainer_spec.model_type = pb.TrainerSpec.BPE
mp.trainer_spec.byte_fallback = True
mp.normalizer_spec.name = "identity"
mp.normalizer_spec.add_dummy_prefix = False
mp.normalizer_spec.remove_extra_whitespaces = False
mp.normalizer_spec.escape_whitespaces = True
P = pb.ModelProto.SentencePiece
kinds = {1: P.NORMAL, 2: P.UNKNOWN, 3: P.CONTROL, 4: P.USER_DEFINED, 6: P.BYTE}
for t, s, k in zip(field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")):
    p = mp.pieces.add(); p.piece = bytes(t).decode("utf-8"); p.score = float(s[0]); p.type = kinds[int(k[0])]
sp = spm.SentencePieceProcessor(model_proto=mp.SerializeToString())
ids = [[2] + sp.encode(t) for t in texts]
d, fname = os.path.split(path)
m = T.AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, torch_dtype=torch.float32).eval()
with torch.no_grad():
    logits = m(input_ids=torch.tensor([ids[0]])).logits[0]
    greedy = m.generate(input_ids=torch.tensor([ids[0]]), max_new_tokens=12, do_sample=False)[0, len(ids[0]):]
print(json.dumps({"ids": ids, "last": logits[-1].tolist(), "max_abs": logits.abs().max().item(),
                  "argmax": logits.argmax(-1).tolist(), "greedy": greedy.tolist()}))
"#;

#[test]
#[ignore = "needs scripts/bootstrap.sh --gemma3"]
fn gemma3_270m_matches_transformers_on_its_gguf() {
    let path = r2m::paths::gemma3_270m_gguf();
    assert!(path.exists(), "{} is missing: run scripts/bootstrap.sh --gemma3", path.display());
    let loaded = CausalLm::load_path("gemma3-270m", Device::Cpu).unwrap();
    let (m, tok) = (loaded.model, loaded.tokenizer);
    assert_eq!((m.config.arch.model_type(), m.config.hidden_size, m.config.num_hidden_layers), ("gemma3_text", 640, 18));
    let out = python(REF_PY, &[path.to_str().unwrap(), &serde_json::to_string(TEXTS).unwrap()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let want: Vec<Vec<u32>> = serde_json::from_value(v["ids"].clone()).unwrap();
    for (t, w) in TEXTS.iter().zip(&want) {
        assert_eq!(&tok.encode(t, true).unwrap(), w, "ids of {t:?}");
    }
    let ids: Vec<i64> = want[0].iter().map(|&i| i as i64).collect();
    let x = Tensor::from_slice(&ids).view([1, -1]);
    let logits = tch::no_grad(|| m.forward(&x, &x.ones_like())).unwrap().squeeze_dim(0);
    let last: Vec<f32> = serde_json::from_value(v["last"].clone()).unwrap();
    let d = (logits.get(-1) - Tensor::from_slice(&last)).abs().max().double_value(&[]);
    let scale = v["max_abs"].as_f64().unwrap();
    assert!(d <= 1e-3 * scale.max(1.0), "last-token logits differ by {d} (max |logit| {scale})");
    let argmax: Vec<i64> = serde_json::from_value(v["argmax"].clone()).unwrap();
    assert_eq!(Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap(), argmax);
    // Greedy text: transformers' tokens, and words (a base model continuing a sentence).
    let g = generate(&m, &[ids], &GenerateConfig { max_new_tokens: 12, sampling: Sampling::Greedy, ..Default::default() }).unwrap();
    let new: Vec<i64> = Vec::<i64>::try_from(g.ids.get(0).to_kind(Kind::Int64)).unwrap();
    let hf: Vec<i64> = serde_json::from_value(v["greedy"].clone()).unwrap();
    let text = tok.decode(&new.iter().map(|&i| i as u32).collect::<Vec<_>>(), true).unwrap();
    eprintln!("greedy: {}{text}", TEXTS[0]);
    assert_eq!(new, hf, "greedy tokens ({text:?})");
    assert!(text.split_whitespace().filter(|w| w.chars().all(|c| c.is_alphabetic())).count() >= 4, "greedy continuation: {text:?}");
}
