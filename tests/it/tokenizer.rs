//! Tokenizers against Python transformers: SmolLM2 from its GGUF (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=..)`), all-MiniLM-L6-v2 from its tokenizer.json, chat templates, and `save_hf` folders
//! loaded back by `AutoTokenizer.from_pretrained(saved)`. One Python run computes every reference
//! (transformers' GGUF tokenizer conversion alone takes ~15 s), shared by the tests below.
use crate::common;
use r2m::tokenizer::{Message, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

/// ASCII, accents, CJK, emoji (with ZWJ and flags), whitespace runs, special-token strings.
const TEXTS: &[&str] = &[
    "Hello, world! This is a test.",
    "The quick brown fox jumps over the lazy dog 1234567890 3.14159.",
    "it's I'm we'll they've DON'T you'd",
    "Café naïve résumé Ångström déjà vu, Ærøskøbing, straße",
    "日本語のテキストと中文字符，还有한국어。",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "  leading and trailing spaces  ",
    "multiple    spaces\tand\t\ttabs\n\nnewlines\r\n end",
    "\n\n\n",
    " ",
    "\t x \n",
    "",
    "code: fn main() { println!(\"{}\", x); }  // comment\n    indented();",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<repo_name>x <|im_end|>",
    "[CLS] hello [SEP] [MASK] world [PAD]",
];

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::system("You are a terse assistant."), Message::user("What is the capital of France?")],
        vec![Message::user("Write a haiku about Rust 🦀.\nMake it  short.")],
        vec![Message::user("Hi!"), Message::assistant("Hello! How can I help?"), Message::user("Tell me a joke about naïve cafés.")],
        vec![Message::system("sys"), Message::user("1+1?"), Message::assistant("2"), Message::user("2+2?"), Message::assistant("4")],
    ]
}

const SCRIPT: &str = r#"
# Parse the GGUF once per process: transformers builds a GGUFReader per call (config, tokenizer,
# tensors), each ~6 s for SmolLM2's 49k-token metadata. The reader is read-only, so sharing it is safe.
import gguf
_readers, _Reader = {}, gguf.GGUFReader
def _shared_reader(path, *a, **k):
    if str(path) not in _readers:
        _readers[str(path)] = _Reader(path, *a, **k)
    return _readers[str(path)]
gguf.GGUFReader = _shared_reader
import json, os, sys
from transformers import AutoTokenizer
gguf, mini, smol_saved, mini_saved, inp = sys.argv[1:]
data = json.load(open(inp))
texts, convs = data["texts"], data["convs"]

def ref(tok, chat):
    out = {
        "ids": [tok(t, add_special_tokens=False)["input_ids"] for t in texts],
        "ids_special": [tok(t, add_special_tokens=True)["input_ids"] for t in texts],
        "bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token,
    }
    out["decode"] = [tok.decode(i, clean_up_tokenization_spaces=False) for i in out["ids"]]
    out["decode_skip"] = [tok.decode(i, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                          for i in out["ids_special"]]
    if chat:
        out["chat"] = [[tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for g in (False, True)]
                       for c in convs]
        out["chat_ids"] = [tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True) for c in convs]
    return out

res = {
    "smol": ref(AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf)), True),
    "mini": ref(AutoTokenizer.from_pretrained(mini), False),
    "smol_saved": ref(AutoTokenizer.from_pretrained(smol_saved), True),
    "mini_saved": ref(AutoTokenizer.from_pretrained(mini_saved), False),
}
print(json.dumps(res))
"#;

struct Fixture {
    smol: Tokenizer,
    mini: Tokenizer,
    reference: Value,
}

/// Loads both tokenizers, saves them with `save_hf`, then runs the Python references once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let gguf = r2m::paths::smollm2_gguf();
        let smol = r2m::model::load::gguf::read_tokenizer(&gguf).expect("SmolLM2 GGUF tokenizer");
        let mini = Tokenizer::from_hf_dir(&r2m::paths::minilm_dir()).expect("MiniLM tokenizer");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-tokenizer");
        let (smol_saved, mini_saved) = (dir.join("smol_saved"), dir.join("mini_saved"));
        smol.save_hf(&smol_saved).expect("save_hf smol");
        mini.save_hf(&mini_saved).expect("save_hf mini");
        let inp = dir.join("input.json");
        let convs = conversations();
        std::fs::write(&inp, serde_json::json!({"texts": TEXTS, "convs": convs}).to_string()).unwrap();
        let out = common::python(
            SCRIPT,
            &[
                gguf.to_str().unwrap(),
                r2m::paths::minilm_dir().to_str().unwrap(),
                smol_saved.to_str().unwrap(),
                mini_saved.to_str().unwrap(),
                inp.to_str().unwrap(),
            ],
        );
        let reference: Value = serde_json::from_str(out.trim().lines().last().unwrap()).expect("python json");
        Fixture { smol, mini, reference }
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Ids (without and, where both agree on it, with special tokens) equal to transformers for every text.
fn check_ids(tok: &Tokenizer, r: &Value, with_special: bool) {
    for (i, t) in TEXTS.iter().enumerate() {
        assert_eq!(tok.encode(t, false).unwrap(), ids(&r["ids"][i]), "text {t:?}");
        if with_special {
            assert_eq!(tok.encode(t, true).unwrap(), ids(&r["ids_special"][i]), "text {t:?} (special)");
        }
    }
}

#[test]
fn smollm2_gguf_ids_equal_transformers() {
    let f = fixture();
    check_ids(&f.smol, &f.reference["smol"], false);
    // Special tokens are single ids, and no space is prepended (candle's builder adds one).
    assert_eq!(f.smol.encode("<|im_start|>user", false).unwrap()[0], 1);
    assert_eq!(f.smol.encode("Hello", false).unwrap(), ids(&f.reference["smol"]["ids"][0])[..1].to_vec());
}

/// Known deviation: transformers' GGUF loader makes a LlamaTokenizerFast with its default
/// add_bos_token=True and ignores the file's `tokenizer.ggml.add_bos_token = false` (which the
/// original SmolLM2 tokenizer and llama.cpp follow); it also names token 1 `<|im_start|>` as EOS.
/// r2m follows the file: no BOS, EOS = <|im_end|> (id 2).
#[test]
fn smollm2_gguf_special_tokens_follow_the_file() {
    let f = fixture();
    let r = &f.reference["smol"];
    assert!(!f.smol.add_bos());
    for (i, t) in TEXTS.iter().enumerate() {
        let hf_special = ids(&r["ids_special"][i]);
        assert_eq!(hf_special[0], 1, "transformers prepends <|im_start|>");
        assert_eq!(f.smol.encode(t, true).unwrap(), hf_special[1..].to_vec(), "text {t:?}");
    }
    assert_eq!(f.smol.bos_id(), Some(1));
    assert_eq!(f.smol.eos_ids(), vec![2]);
    assert_eq!(f.smol.pad_id(), 2);
    assert_eq!(f.smol.vocab_size(), 49152);
    assert_eq!(f.smol.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(f.smol.token_to_id("<|endoftext|>"), Some(0));
    // The last id decodes; the first id past the vocabulary is an error that names it.
    assert!(f.smol.decode(&[49151], false).is_ok());
    let e = f.smol.decode(&[5, 49152], false).unwrap_err().to_string();
    assert!(e.contains("token id 49152 is out of the vocabulary (size 49152)"), "{e}");
}

#[test]
fn minilm_ids_equal_transformers() {
    let f = fixture();
    check_ids(&f.mini, &f.reference["mini"], true);
    assert!(!f.mini.add_bos());
    assert_eq!(f.mini.pad_id(), 0);
    assert_eq!(f.mini.model_max_length(), Some(512));
    // tokenizer.json pads to 128: switched off, as transformers does.
    assert_eq!(f.mini.encode("hi", true).unwrap().len(), 3);
}

#[test]
fn decode_equals_transformers_and_round_trips() {
    let f = fixture();
    for (tok, key) in [(&f.smol, "smol"), (&f.mini, "mini")] {
        let r = &f.reference[key];
        for (i, t) in TEXTS.iter().enumerate() {
            let got = tok.decode(&ids(&r["ids"][i]), false).unwrap();
            assert_eq!(got, r["decode"][i].as_str().unwrap(), "{key} decode of {t:?}");
            let got = tok.decode(&ids(&r["ids_special"][i]), true).unwrap();
            assert_eq!(got, r["decode_skip"][i].as_str().unwrap(), "{key} decode(skip) of {t:?}");
        }
    }
    // Byte-level BPE: exact round trip, specials included.
    for t in TEXTS {
        let ids = f.smol.encode(t, false).unwrap();
        assert_eq!(f.smol.decode(&ids, false).unwrap(), *t);
    }
    let e = f.smol.decode(&[49152], false).unwrap_err().to_string();
    assert!(e.contains("49152"), "{e}");
}

#[test]
fn smollm2_chat_template_equals_transformers() {
    let f = fixture();
    let r = &f.reference["smol"];
    for (i, conv) in conversations().iter().enumerate() {
        for (j, gen) in [false, true].into_iter().enumerate() {
            let got = f.smol.apply_chat_template(conv, gen).unwrap();
            assert_eq!(got, r["chat"][i][j].as_str().unwrap(), "conversation {i}, add_generation_prompt={gen}");
        }
        let text = f.smol.apply_chat_template(conv, true).unwrap();
        assert_eq!(f.smol.encode(&text, false).unwrap(), ids(&r["chat_ids"][i]), "conversation {i} ids");
    }
    let e = f.mini.apply_chat_template(&conversations()[0], true).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn save_hf_round_trips_through_transformers() {
    let f = fixture();
    for (tok, key) in [(&f.smol, "smol_saved"), (&f.mini, "mini_saved")] {
        let r = &f.reference[key];
        check_ids(tok, r, true);
        for (i, t) in TEXTS.iter().enumerate() {
            let got = tok.decode(&ids(&r["ids"][i]), false).unwrap();
            assert_eq!(got, r["decode"][i].as_str().unwrap(), "{key} decode of {t:?}");
        }
    }
    let r = &f.reference["smol_saved"];
    assert_eq!(r["bos"], "<|im_start|>");
    assert_eq!(r["eos"], "<|im_end|>");
    assert_eq!(r["pad"], "<|im_end|>");
    for (i, conv) in conversations().iter().enumerate() {
        for (j, gen) in [false, true].into_iter().enumerate() {
            let got = f.smol.apply_chat_template(conv, gen).unwrap();
            assert_eq!(got, r["chat"][i][j].as_str().unwrap(), "saved: conversation {i}, gen={gen}");
        }
    }
    // And r2m reads its own folders back unchanged.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("it-tokenizer");
    let back = Tokenizer::from_hf_dir(&dir.join("smol_saved")).unwrap();
    assert_eq!((back.bos_id(), back.eos_ids(), back.pad_id(), back.add_bos()), (Some(1), vec![2], 2, false));
    assert_eq!(back.chat_template(), f.smol.chat_template());
    assert_eq!(back.model_max_length(), Some(8192));
}

#[test]
fn missing_tokenizer_json_names_the_path() {
    let d = common::tmpdir();
    let e = Tokenizer::from_hf_dir(d.path()).unwrap_err();
    assert!(matches!(e, r2m::Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&d.path().join("tokenizer.json").display().to_string()), "{e}");
}
