//! `analyze-hidden` end to end on a tiny random Llama with the SmolLM2 tokenizer: table shape,
//! files, value ranges, response-only pooling (checked against an unpadded forward), where the
//! response starts for each dataset format, and errors that name the missing file.
use crate::common::{python, tmpdir};
use r2m::analysis::{analyze, pool_responses, tokenize_pair, HiddenConfig};
use r2m::data::{LoadOptions, Origin, PreferenceExample, Text};
use r2m::model::causal_lm::CausalLm;
use r2m::tokenizer::Message;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn tiny_lm(dir: &Path) {
    python(
        r#"
import sys, torch, transformers
torch.manual_seed(3)
cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
transformers.LlamaForCausalLM(cfg).save_pretrained(sys.argv[1], safe_serialization=True)
"#,
        &[dir.to_str().unwrap()],
    );
    let tok = r2m::model::load::gguf::read_tokenizer(&r2m::paths::smollm2_gguf()).unwrap();
    tok.save_hf(dir).unwrap();
}

fn write_pairs(path: &Path, n: usize) {
    let topics = ["tea", "maps", "rivers", "clocks", "bread", "music", "rain", "bikes"];
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let t = topics[i % topics.len()];
            serde_json::json!({
                "prompt": format!("Question {i}: tell me about {t}."),
                "chosen": format!(" {t} are wonderful, truly {}.", ["great", "fine"][i % 2]),
                "rejected": format!(" I refuse to talk about {t}{}", "!".repeat(1 + i % 3)),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn cfg(model: &Path, data: &Path, out: &Path) -> HiddenConfig {
    HiddenConfig {
        model: model.to_str().unwrap().into(),
        data: data.to_path_buf(),
        rm: Some(model.to_str().unwrap().into()), // the LM as an RM backbone with a fresh head
        batch: 3,                                 // 16 sequences: batches of 3 with padding
        out: out.to_path_buf(),
        ..Default::default()
    }
}

fn in_unit(v: f64) -> bool {
    (-1.0 - 1e-9..=1.0 + 1e-9).contains(&v)
}

#[test]
fn analyze_hidden_end_to_end() {
    let d = tmpdir();
    let model = d.path().join("lm");
    tiny_lm(&model);
    let data = d.path().join("pairs.jsonl");
    write_pairs(&data, 8);
    let out = d.path().join("out");
    let c = cfg(&model, &data, &out);
    let rep = analyze(&c).unwrap();

    // L + 1 rows (embeddings, 2 blocks), every value a cosine or a correlation.
    assert_eq!((rep.num_layers, rep.hidden_size, rep.pairs), (2, 32, 8));
    assert_eq!(rep.layers.iter().map(|r| r.layer).collect::<Vec<_>>(), vec![0, 1, 2]);
    for r in &rep.layers {
        for v in [r.intra, r.intra_chosen, r.intra_rejected, r.cross, r.matched, r.pearson.unwrap(), r.spearman.unwrap()] {
            assert!(in_unit(v), "layer {}: {v} out of [-1, 1]: {r:?}", r.layer);
        }
        assert!((r.gap - (r.intra - r.cross)).abs() < 1e-12);
    }
    assert_eq!(rep.matched_cos.len(), 3);
    assert!(rep.matched_cos.iter().all(|m| m.len() == 8 && m.iter().all(|&v| in_unit(v))));
    let rw = rep.rewards.as_ref().unwrap();
    assert_eq!((rw.chosen.len(), rw.rejected.len()), (8, 8));
    assert!(rw.chosen.iter().chain(&rw.rejected).all(|v| v.is_finite()));

    // Only the response is pooled: its tokens plus the EOS the plain-text rendering appends.
    let tok = r2m::tokenizer::Tokenizer::from_hf_dir(&model).unwrap();
    let pairs = r2m::data::load_preferences(&data, &LoadOptions::default()).unwrap().items;
    for (ex, info) in pairs.iter().zip(&rep.pair_info) {
        let Text::Plain(resp) = &ex.chosen else { unreachable!() };
        assert_eq!(info.chosen_response_tokens, tok.encode(resp, false).unwrap().len() + 1, "{}", info.origin);
    }

    // The table on stdout and the files.
    let text = rep.table().to_text();
    assert_eq!(text.lines().count(), 2 + 3, "{text}");
    assert!(text.lines().next().unwrap().contains("spearman"));
    let files = rep.write(&out).unwrap();
    for name in [
        "hidden_similarity.csv",
        "hidden_similarity.json",
        "similarity_by_layer.png",
        "similarity_by_layer.svg",
        "reward_correlation_by_layer.png",
        "reward_correlation_by_layer.svg",
    ] {
        let p = out.join(name);
        assert!(files.contains(&p) && std::fs::metadata(&p).unwrap().len() > 0, "{name}");
    }
    let csv = std::fs::read_to_string(out.join("hidden_similarity.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.starts_with("layer,intra,intra_chosen,intra_rejected,cross,gap,matched,pearson"));
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("hidden_similarity.json")).unwrap()).unwrap();
    assert_eq!(json["layers"].as_array().unwrap().len(), 3);
    assert_eq!(json["pairs"], 8);

    // Without an RM: no correlation columns, no correlation plot.
    let mut no_rm = cfg(&model, &data, &d.path().join("out2"));
    no_rm.rm = None;
    no_rm.max_pairs = 4;
    let rep2 = analyze(&no_rm).unwrap();
    assert_eq!(rep2.pairs, 4);
    assert!(rep2.layers.iter().all(|r| r.pearson.is_none()));
    assert!(!rep2.table().to_text().contains("pearson"));
    rep2.write(&no_rm.out).unwrap();
    assert!(!no_rm.out.join("reward_correlation_by_layer.png").exists());

    // One Python model build for both checks (transformers' import is most of the test's time).
    check_pooling_ignores_padding_and_prompt(&model);
}

/// Pooled states of a padded batch equal the mean over the response of an unpadded forward.
fn check_pooling_ignores_padding_and_prompt(dir: &Path) {
    let lm = CausalLm::load_path(dir.to_str().unwrap(), Device::Cpu).unwrap();
    let seqs: Vec<(Vec<i64>, usize)> = vec![(vec![5, 17, 99, 3, 44, 8], 2), (vec![11, 12], 1), (vec![13, 14, 15, 16], 3)];
    let pooled = pool_responses(&lm.model, 2, &seqs, 8).unwrap(); // (L+1, 3, D), one padded batch
    assert_eq!(pooled.size(), vec![3, 3, 32]);
    let _g = tch::no_grad_guard();
    for (i, (ids, start)) in seqs.iter().enumerate() {
        let n = ids.len() as i64;
        let t = Tensor::from_slice(ids).view([1, n]);
        let h = lm.model.forward_hidden(&t, &Tensor::ones([1, n], (Kind::Int64, Device::Cpu)), true).unwrap();
        for (l, x) in h.all.unwrap().iter().enumerate() {
            let want = x.get(0).narrow(0, *start as i64, n - *start as i64).mean_dim([0i64].as_slice(), false, Kind::Float);
            let got = pooled.get(l as i64).get(i as i64);
            let err = (got - want).abs().max().double_value(&[]);
            assert!(err < 1e-4, "sequence {i}, layer {l}: max error {err}");
        }
    }
    assert!(pool_responses(&lm.model, 2, &[(vec![1, 2], 2)], 8).unwrap_err().to_string().contains("no response tokens"));
}

#[test]
fn response_start_for_each_format() {
    let tok = r2m::model::load::gguf::read_tokenizer(&r2m::paths::smollm2_gguf()).unwrap();
    let origin = Origin { file: PathBuf::from("x.jsonl"), line: 1 };
    let msgs = |c: &str| vec![Message::user("Name a colour."), Message::assistant(c)];
    // Conversational, explicit prompt: the prompt is the template with the generation prompt.
    let ex = PreferenceExample {
        prompt: Some(Text::Chat(vec![Message::user("Name a colour.")])),
        chosen: Text::Chat(vec![Message::assistant("Blue.")]),
        rejected: Text::Chat(vec![Message::assistant("No.")]),
        origin: origin.clone(),
    };
    let p = tokenize_pair(&tok, &ex, 1024).unwrap().unwrap();
    let prompt_len = tok.encode(&tok.apply_chat_template(&[Message::user("Name a colour.")], true).unwrap(), false).unwrap().len();
    assert_eq!((p.chosen_start, p.rejected_start), (prompt_len, prompt_len));
    assert!(p.chosen.len() > prompt_len && p.rejected.len() > prompt_len);
    // Implicit prompt: the shared leading messages are the prompt; same start as explicit.
    let imp =
        PreferenceExample { prompt: None, chosen: Text::Chat(msgs("Blue.")), rejected: Text::Chat(msgs("No.")), origin: origin.clone() };
    let q = tokenize_pair(&tok, &imp, 1024).unwrap().unwrap();
    assert_eq!(q, p);
    // Plain, implicit prompt: the common token prefix of chosen and rejected.
    let plain = PreferenceExample {
        prompt: None,
        chosen: Text::Plain("Q: colour? A: blue".into()),
        rejected: Text::Plain("Q: colour? A: no".into()),
        origin: origin.clone(),
    };
    let r = tokenize_pair(&tok, &plain, 1024).unwrap().unwrap();
    assert_eq!(r.chosen[..r.chosen_start], r.rejected[..r.rejected_start]);
    assert_ne!(r.chosen[r.chosen_start], r.rejected[r.rejected_start]);
    // Cut before the response starts: skipped with a reason, not pooled.
    let long = PreferenceExample {
        prompt: Some(Text::Plain("word ".repeat(50))),
        chosen: Text::Plain("yes".into()),
        rejected: Text::Plain("no".into()),
        origin,
    };
    let why = tokenize_pair(&tok, &long, 10).unwrap().unwrap_err();
    assert!(why.contains("max_length"), "{why}");
}

#[test]
fn analyze_hidden_names_missing_inputs() {
    let d = tmpdir();
    let missing = d.path().join("nope.jsonl");
    let c = HiddenConfig { model: "smollm2-135m-instruct".into(), data: missing.clone(), ..Default::default() };
    let e = analyze(&c).unwrap_err().to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
    let data = d.path().join("pairs.jsonl");
    write_pairs(&data, 3);
    let c = HiddenConfig { model: d.path().join("no-model").to_str().unwrap().into(), data, ..Default::default() };
    let e = analyze(&c).unwrap_err().to_string();
    assert!(e.contains("no-model"), "{e}");
    let c = HiddenConfig { max_pairs: 1, ..c };
    assert!(analyze(&c).unwrap_err().to_string().contains("at least 2"));
}
