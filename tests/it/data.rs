//! Data layer end to end with SmolLM2's tokenizer: JSONL -> load -> render -> tokenize -> batches.
//! TRL's RewardTrainer rule is recomputed in Python with transformers on the same files.
use crate::common::{python, tmpdir};
use r2m::data::{
    load_preferences, load_prompts, pad_batch, render_preference, render_prompt, split_holdout, tokenize_pairs, Batcher, Cursor,
    LoadOptions, PadSide, PreferenceExample, Text,
};
use r2m::tokenizer::{Message, Tokenizer};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::OnceLock;

fn smol() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| r2m::model::load::gguf::read_tokenizer(&r2m::paths::smollm2_gguf()).expect("SmolLM2 GGUF tokenizer"))
}

fn write_jsonl(path: &Path, rows: &[Value]) {
    let body: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, body).unwrap();
}

fn msg(role: &str, content: &str) -> Value {
    json!({"role": role, "content": content})
}

fn plain_rows() -> Vec<Value> {
    vec![
        json!({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}),
        json!({"prompt": "Q: 2+2?\nA:", "chosen": " 4<|im_end|>", "rejected": " 5"}),
        json!({"prompt": "Café ", "chosen": "au lait 😀", "rejected": "noir"}),
    ]
}

fn chat_rows() -> Vec<Value> {
    vec![
        json!({
            "prompt": [msg("system", "Be brief."), msg("user", "What color is the sky?")],
            "chosen": [msg("assistant", "Blue.")],
            "rejected": [msg("assistant", "Green, mostly.")],
        }),
        json!({
            "prompt": [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "2+2?")],
            "chosen": [msg("assistant", "4")],
            "rejected": [msg("assistant", "5")],
        }),
    ]
}

fn implicit_chat_rows() -> Vec<Value> {
    vec![json!({
        "chosen": [msg("user", "Name a fruit."), msg("assistant", "Apple.")],
        "rejected": [msg("user", "Name a fruit."), msg("assistant", "Carrot.")],
    })]
}

/// TRL's RewardTrainer._prepare_dataset, written out: add EOS to plain chosen/rejected when
/// missing, prepend the prompt, tokenize (`tokenizer(text)` or `apply_chat_template(msgs)`).
const TRL_RULE_PY: &str = r#"
import sys, json, transformers
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
out = []
for path in sys.argv[2:]:
    for line in open(path, encoding="utf-8"):
        ex = json.loads(line)
        conv = isinstance(ex["chosen"], list)
        pair = []
        for key in ("chosen", "rejected"):
            x = ex[key]
            if not conv and not x.endswith(tok.eos_token):
                x = x + tok.eos_token
            if "prompt" in ex:
                x = ex["prompt"] + x
            ids = tok.apply_chat_template(x, tokenize=True) if conv else tok(text=x)["input_ids"]
            text = tok.apply_chat_template(x, tokenize=False) if conv else x
            pair.append({"ids": list(ids), "text": text})
        out.append(pair)
print(json.dumps(out))
"#;

#[test]
fn trl_reward_rule_matches_transformers_smollm2() {
    let tok = smol();
    let d = tmpdir();
    let files = [("plain.jsonl", plain_rows()), ("chat.jsonl", chat_rows()), ("implicit.jsonl", implicit_chat_rows())];
    let mut examples: Vec<PreferenceExample> = vec![];
    for (name, rows) in &files {
        let p = d.path().join(name);
        write_jsonl(&p, rows);
        let l = load_preferences(&p, &LoadOptions::default()).unwrap();
        assert_eq!(l.items.len(), rows.len());
        examples.extend(l.items);
    }
    let hf = d.path().join("hf");
    tok.save_hf(&hf).unwrap();
    let paths: Vec<String> = files.iter().map(|(n, _)| d.path().join(n).to_string_lossy().into_owned()).collect();
    let mut args = vec![hf.to_str().unwrap()];
    args.extend(paths.iter().map(String::as_str));
    let out = python(TRL_RULE_PY, &args);
    let reference: Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    let t = tokenize_pairs(tok, &examples, None).unwrap();
    assert!(t.truncated.is_empty());
    for (i, ex) in examples.iter().enumerate() {
        let r = &reference[i];
        let (c, rj) = render_preference(tok, ex).unwrap();
        assert_eq!(c, r[0]["text"].as_str().unwrap(), "{} chosen text", ex.origin);
        assert_eq!(rj, r[1]["text"].as_str().unwrap(), "{} rejected text", ex.origin);
        let ids = |v: &Value| v["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
        assert_eq!(t.pairs[i].0, ids(&r[0]), "{} chosen ids", ex.origin);
        assert_eq!(t.pairs[i].1, ids(&r[1]), "{} rejected ids", ex.origin);
    }
    // The rule in words, for the record: plain = prompt + chosen + EOS (once); chat = template over
    // prompt ++ chosen, no generation prompt.
    assert_eq!(render_preference(tok, &examples[0]).unwrap().0, "The sky is blue.<|im_end|>");
    assert_eq!(render_preference(tok, &examples[1]).unwrap().0, "Q: 2+2?\nA: 4<|im_end|>");
    let mut full = vec![Message::system("Be brief."), Message::user("What color is the sky?")];
    full.push(Message::assistant("Blue."));
    assert_eq!(render_preference(tok, &examples[3]).unwrap().0, tok.apply_chat_template(&full, false).unwrap());
}

#[test]
fn truncation_keeps_the_start_smollm2() {
    let tok = smol();
    let d = tmpdir();
    let p = d.path().join("chat.jsonl");
    write_jsonl(&p, &chat_rows());
    let ex = load_preferences(&p, &LoadOptions::default()).unwrap().items;
    let full = tokenize_pairs(tok, &ex, None).unwrap();
    let lens: Vec<usize> = full.pairs.iter().map(|(c, r)| c.len().max(r.len())).collect();
    let m = lens[0].min(lens[1]) - 1; // both pairs exceed m
    let cut = tokenize_pairs(tok, &ex, Some(m)).unwrap();
    assert_eq!(cut.truncated, [0, 1]);
    for ((c, r), (fc, fr)) in cut.pairs.iter().zip(&full.pairs) {
        assert!(c.len() <= m && r.len() <= m);
        assert_eq!(c[..], fc[..c.len()]);
        assert_eq!(r[..], fr[..r.len()]);
    }
    let roomy = tokenize_pairs(tok, &ex, Some(lens[0].max(lens[1]))).unwrap();
    assert!(roomy.truncated.is_empty());
    assert_eq!(roomy.pairs, full.pairs);
}

#[test]
fn prompts_to_left_padded_batches_smollm2() {
    let tok = smol();
    let d = tmpdir();
    let p = d.path().join("prompts.jsonl");
    let rows: Vec<Value> =
        (0..10).map(|i| json!({"prompt": [msg("user", &format!("Count to {i}."))], "id": i, "topic": "counting"})).collect();
    write_jsonl(&p, &rows);
    let prompts = load_prompts(&p, &LoadOptions::default()).unwrap().items;
    assert_eq!(prompts[3].meta["id"], 3);
    let text = render_prompt(tok, &prompts[0].prompt).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    assert_eq!(render_prompt(tok, &Text::Plain("as is".into())).unwrap(), "as is");

    let (train, test) = split_holdout(prompts, 0.2, 1);
    assert_eq!((train.len(), test.len()), (8, 2));
    let b = Batcher::new(train.len(), 3, 5, false).unwrap();
    let (at, idx) = b.batches_from(Cursor::default()).unwrap().next().unwrap();
    assert_eq!((at, idx.len()), (Cursor { epoch: 0, batch: 0 }, 3));
    let seqs: Vec<Vec<i64>> = idx
        .iter()
        .map(|&i| {
            let s = render_prompt(tok, &train[i].prompt).unwrap();
            tok.encode(&s, false).unwrap().into_iter().map(i64::from).collect()
        })
        .collect();
    let batch = pad_batch(&seqs, i64::from(tok.pad_id()), PadSide::Left);
    let t = seqs.iter().map(Vec::len).max().unwrap() as i64;
    assert_eq!(batch.ids.size(), [3, t]);
    let lens: Vec<i64> = Vec::try_from(batch.mask.sum_dim_intlist(1, false, tch::Kind::Int64)).unwrap();
    assert_eq!(lens, seqs.iter().map(|s| s.len() as i64).collect::<Vec<_>>());
    // Left padding: every row ends with the template's last token.
    let last: Vec<i64> = Vec::try_from(batch.ids.select(1, t - 1)).unwrap();
    assert!(last.iter().zip(&seqs).all(|(l, s)| l == s.last().unwrap()));
}
