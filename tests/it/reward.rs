//! Reward models: HF LlamaForSequenceClassification parity both ways; train-rm end to end on a
//! separable synthetic set; bit-identical resume.
use crate::common::{python, tmpdir};
use r2m::model::load::safetensors;
use r2m::reward::model::{right_pad, Batch};
use r2m::reward::train::{run, TrainRmConfig};
use r2m::reward::RewardModel;
use std::path::Path;
use tch::{Device, Tensor};

/// Writes the SmolLM2 tokenizer files into `dir` (tiny test models reuse its vocabulary).
fn put_tokenizer(dir: &Path) {
    let tok = r2m::model::load::gguf::read_tokenizer(&r2m::paths::smollm2_gguf()).unwrap();
    tok.save_hf(dir).unwrap();
}

const TINY_RM_PY: &str = r#"
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_labels=1, pad_token_id=2)
m = transformers.LlamaForSequenceClassification(cfg)
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.2)
m.save_pretrained(sys.argv[1], safe_serialization=True)
"#;

const SCORE_PY: &str = r#"
import sys, json, torch, transformers
m = transformers.AutoModelForSequenceClassification.from_pretrained(sys.argv[1], torch_dtype=torch.float32).eval()
seqs = json.loads(sys.argv[2])
T = max(len(s) for s in seqs)
ids = torch.tensor([s + [2] * (T - len(s)) for s in seqs])
mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
with torch.no_grad():
    print(json.dumps(m(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()))
"#;

fn hf_scores(dir: &Path, seqs: &[Vec<i64>]) -> Vec<f64> {
    let out = python(SCORE_PY, &[dir.to_str().unwrap(), &serde_json::to_string(seqs).unwrap()]);
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn sequence_classifier_parity_with_transformers_both_ways() {
    let d = tmpdir();
    python(TINY_RM_PY, &[d.path().to_str().unwrap()]);
    put_tokenizer(d.path());
    let seqs = vec![vec![5i64, 17, 99, 3, 44], vec![11, 12], vec![13, 14, 15, 16, 17, 18, 19]];
    let want = hf_scores(d.path(), &seqs);
    let rm = RewardModel::load(d.path().to_str().unwrap(), 0, Device::Cpu).unwrap();
    let b = right_pad(&seqs, 2);
    let (s, h) = tch::no_grad(|| rm.score(&Batch { ids: b.ids, mask: b.mask })).unwrap();
    assert_eq!(h.size(), vec![3, 64]);
    let got = Vec::<f64>::try_from(s.to_kind(tch::Kind::Double)).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4, "r2m {got:?} vs transformers {want:?}");
    }
    // r2m's saved RM loads in transformers with the same scores.
    let saved = d.path().join("saved");
    rm.save(&saved).unwrap();
    let again = hf_scores(&saved, &seqs);
    for (g, w) in got.iter().zip(&again) {
        assert!((g - w).abs() <= 1e-4, "after save: r2m {got:?} vs transformers {again:?}");
    }
}

/// A separable synthetic preference set: the chosen answer agrees with the question's polarity
/// word, the rejected one contradicts it.
fn write_synthetic_pairs(path: &Path, n: usize) {
    let topics = ["tea", "maps", "rivers", "clocks", "bread", "music", "rain", "bikes", "stars", "paper"];
    let mut lines = vec![];
    for i in 0..n {
        let t = topics[i % topics.len()];
        let good = ["wonderful", "excellent", "great", "lovely"][i % 4];
        let bad = ["terrible", "awful", "horrible", "dreadful"][(i / 4) % 4];
        let rec = serde_json::json!({
            "prompt": format!("Question {i}: tell me about {t}."),
            "chosen": format!(" {t} are {good}, truly {good}."),
            "rejected": format!(" {t} are {bad}, truly {bad}."),
        });
        lines.push(rec.to_string());
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn tiny_backbone(dir: &Path) {
    python(
        r#"
import sys, torch, transformers
torch.manual_seed(1)
cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=128, tie_word_embeddings=True)
transformers.LlamaForCausalLM(cfg).save_pretrained(sys.argv[1], safe_serialization=True)
"#,
        &[dir.to_str().unwrap()],
    );
    put_tokenizer(dir);
}

fn cfg_for(backbone: &Path, data: &Path, out: &Path) -> TrainRmConfig {
    let mut c = TrainRmConfig::default();
    c.model = backbone.to_str().unwrap().into();
    c.data.train = data.to_path_buf();
    c.data.eval_fraction = 0.2;
    c.out = out.to_path_buf();
    c.device = "cpu".into();
    c.train.epochs = 3;
    c.train.micro_batch = 8;
    c.train.grad_accum = 2;
    c.train.lr = 3e-3;
    c.train.warmup_ratio = 0.1;
    c.train.eval_every = 10;
    c.train.save_every = 7;
    c
}

/// A temp folder with a tiny backbone and 200 separable pairs: (folder, backbone, pairs file).
fn tiny_backbone_and_pairs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let d = tmpdir();
    let backbone = d.path().join("backbone");
    tiny_backbone(&backbone);
    let data = d.path().join("pairs.jsonl");
    write_synthetic_pairs(&data, 200);
    (d, backbone, data)
}

#[test]
fn train_rm_learns_a_separable_set_and_resumes_bit_identically() {
    let _rng = crate::common::torch_rng_lock();
    let (d, backbone, data) = tiny_backbone_and_pairs();

    let a = cfg_for(&backbone, &data, &d.path().join("a"));
    let sa = run(&a, false, false).unwrap();
    assert!(sa.eval_accuracy > 0.9, "held-out accuracy {}", sa.eval_accuracy);
    assert_eq!(sa.eval_pairs, 40);

    // Interrupted after 10 steps (last checkpoint at 7), then resumed.
    let mut b = cfg_for(&backbone, &data, &d.path().join("b"));
    b.train.stop_after = Some(10);
    assert!(run(&b, false, false).is_err());
    b.train.stop_after = None;
    let sb = run(&b, true, false).unwrap();
    assert_eq!(sa.steps, sb.steps);
    let wa = safetensors::read_file(&sa.model_dir.join("model.safetensors")).unwrap();
    let wb: std::collections::HashMap<String, Tensor> =
        safetensors::read_file(&sb.model_dir.join("model.safetensors")).unwrap().into_iter().collect();
    for (n, t) in &wa {
        assert!(t.equal(&wb[n]), "{n} differs between the uninterrupted and the resumed run");
    }
    let ma = std::fs::read_to_string(d.path().join("a/metrics.jsonl")).unwrap();
    let mb = std::fs::read_to_string(d.path().join("b/metrics.jsonl")).unwrap();
    assert_eq!(ma, mb, "metrics differ between the uninterrupted and the resumed run");
}

/// train-rm in bf16 autocast (`dtype = "bf16"`): the backbone's matmuls in bf16 over f32 master
/// weights; it learns the same separable set, and a bad dtype is named.
#[test]
fn train_rm_learns_in_bf16() {
    let _rng = crate::common::torch_rng_lock();
    let (d, backbone, data) = tiny_backbone_and_pairs();
    let mut c = cfg_for(&backbone, &data, &d.path().join("bf16"));
    c.dtype = "bf16".into();
    let s = run(&c, false, false).unwrap();
    assert!(s.eval_accuracy > 0.9, "bf16: held-out accuracy {}", s.eval_accuracy);
    let w = safetensors::read_file(&s.model_dir.join("model.safetensors")).unwrap();
    assert!(w.iter().all(|(_, t)| t.kind() != tch::Kind::BFloat16), "the saved weights are the f32 masters");
    c.dtype = "fp4".into();
    let e = format!("{:#}", run(&c, false, false).unwrap_err());
    assert!(e.contains("dtype") && e.contains("fp4"), "{e}");
}

#[test]
fn train_rm_config_typos_and_bad_records_are_named() {
    let e = r2m::config::load::<TrainRmConfig>(None, &["train.lrr=1".into()]).unwrap_err().to_string();
    assert!(e.contains("train.lrr"), "{e}");
    let d = tmpdir();
    let data = d.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": 3, \"rejected\": \"c\"}\n",
    )
    .unwrap();
    let mut c = TrainRmConfig::default();
    c.model = "all-minilm-l6-v2".into();
    c.data.train = data.clone();
    c.out = d.path().join("o");
    c.device = "cpu".into();
    let e = format!("{:#}", run(&c, false, false).unwrap_err());
    assert!(e.contains("bad.jsonl") && e.contains('2') && e.contains("chosen"), "{e}");
}

/// Runs `r2m train-rm` on the config `cfg` (written next to its out folder) with `extra` flags;
/// returns whether it succeeded and its stderr.
fn train_rm_cli(cfg: &TrainRmConfig, extra: &[&str]) -> (bool, String) {
    let path = cfg.out.with_extension("toml");
    r2m::config::save(cfg, &path).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["train-rm", "--config", path.to_str().unwrap(), "--quiet", "--dist-timeout", "60"])
        .args(extra)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The trained parameters as the last checkpoint holds them (f64 in an f64 run; the exported
/// model is f32).
fn trained(out: &Path) -> std::collections::BTreeMap<String, Tensor> {
    safetensors::read_file(&out.join("checkpoint/trainable.safetensors")).unwrap().into_iter().collect()
}

/// How far (relative, plus absolute) f64 runs that sum the same values in other orders may differ.
const EXACT: f64 = 1e-10;

/// Data parallel train-rm (`--nproc 2`, Gloo on localhost), in f64: the same run as one process
/// (each rank scores half of every micro-batch, the gradients are summed) within [`EXACT`]; a
/// run stopped on 2 ranks resumes on 2 bit-identically and on 1 within [`EXACT`]; only rank 0
/// writes, and each rank has its log.
#[test]
fn train_rm_on_two_ranks_matches_one_process_and_resumes_on_either() {
    let (d, backbone, data) = tiny_backbone_and_pairs();
    let cfg = |name: &str| {
        let mut c = cfg_for(&backbone, &data, &d.path().join(name));
        c.dtype = "f64".into();
        c.train.max_steps = Some(8);
        c.train.save_every = 3;
        c.train.eval_every = 4;
        // 7 pairs a micro-batch: one rank gets 4, the other 3.
        c.train.micro_batch = 7;
        c
    };
    let (ok, err) = train_rm_cli(&cfg("one"), &[]);
    assert!(ok, "{err}");
    let (ok, err) = train_rm_cli(&cfg("two"), &["--nproc", "2"]);
    assert!(ok, "{err}");
    let (one, two) = (d.path().join("one"), d.path().join("two"));
    assert!(two.join("logs/rank0.log").exists() && two.join("logs/rank1.log").exists());
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert_eq!(m1.len(), 8);
    assert_eq!(m2.len(), 8, "rank 0 alone writes the metrics");
    for (a, b) in m1.iter().zip(&m2) {
        for key in ["loss", "accuracy", "grad_norm", "eval/accuracy", "eval/loss"] {
            if let (Some(x), Some(y)) = (a[key].as_f64(), b[key].as_f64()) {
                assert!((x - y).abs() <= EXACT * (1.0 + x.abs()), "step {}: {key} one process {x}, two ranks {y}", a["step"]);
            } else {
                assert_eq!(a[key], b[key], "{key}");
            }
        }
    }
    let (w1, w2) = (trained(&one), trained(&two));
    for (n, t) in &w1 {
        assert_eq!(t.kind(), tch::Kind::Double, "{n}: the checkpoint keeps the f64 weights");
        let diff = (t - &w2[n]).abs().max().double_value(&[]);
        assert!(diff <= EXACT, "{n}: one process and two ranks differ by {diff}");
    }

    // Stopped after 5 steps on 2 ranks (checkpoint at 3), resumed on 2 and on 1.
    let mut stop = cfg("stopped");
    stop.train.stop_after = Some(5);
    let (ok, err) = train_rm_cli(&stop, &["--nproc", "2"]);
    assert!(!ok && err.contains("rank") && err.contains("train.stop_after"), "{err}");
    let again = d.path().join("again");
    copy_dir(&d.path().join("stopped"), &again);
    stop.train.stop_after = None;
    let (ok, err) = train_rm_cli(&stop, &["--nproc", "2", "--resume"]);
    assert!(ok, "{err}");
    assert_eq!(metrics(&d.path().join("stopped")), m2, "resumed on 2 ranks: the uninterrupted run's metrics");
    let w = trained(&d.path().join("stopped"));
    assert!(w2.iter().all(|(n, t)| t.equal(&w[n])), "resumed on 2 ranks: bitwise the same weights");
    let mut on_one = stop.clone();
    on_one.out = again.clone();
    let (ok, err) = train_rm_cli(&on_one, &["--resume"]);
    assert!(ok, "{err}");
    let w = trained(&again);
    for (n, t) in &w2 {
        let diff = (t - &w[n]).abs().max().double_value(&[]);
        assert!(diff <= EXACT, "{n}: resumed on 1 differs from 2 ranks by {diff}");
    }
}

/// ZeRO-1 (`--zero1`: AdamW's moments sharded over the 2 ranks) against the replicated optimiser
/// on 2 ranks, in f64: the same metrics, weights and (gathered) moments within [`EXACT`] (the
/// summation order of the gradient norm differs); its checkpoint holds the whole moments, so a
/// run stopped under ZeRO-1 resumes on one process without it. `--zero1` on one process is refused.
#[test]
fn train_rm_with_zero1_matches_replicated_adamw_and_resumes_without_it() {
    let (d, backbone, data) = tiny_backbone_and_pairs();
    let cfg = |name: &str| {
        let mut c = cfg_for(&backbone, &data, &d.path().join(name));
        c.dtype = "f64".into();
        c.train.max_steps = Some(6);
        c.train.save_every = 3;
        c.train.eval_every = 3;
        c.train.micro_batch = 7;
        c
    };
    let (ok, err) = train_rm_cli(&cfg("two"), &["--nproc", "2"]);
    assert!(ok, "{err}");
    let (ok, err) = train_rm_cli(&cfg("zero"), &["--nproc", "2", "--zero1"]);
    assert!(ok, "{err}");
    let (two, zero) = (d.path().join("two"), d.path().join("zero"));
    let (m2, mz) = (metrics(&two), metrics(&zero));
    assert_eq!(m2.len(), mz.len());
    for (a, b) in m2.iter().zip(&mz) {
        for key in ["loss", "accuracy", "grad_norm", "eval/accuracy", "eval/loss"] {
            if let (Some(x), Some(y)) = (a[key].as_f64(), b[key].as_f64()) {
                assert!((x - y).abs() <= EXACT * (1.0 + x.abs()), "step {}: {key} replicated {x}, ZeRO-1 {y}", a["step"]);
            } else {
                assert_eq!(a[key], b[key], "{key}");
            }
        }
    }
    let close = |what: &str, a: &std::collections::BTreeMap<String, Tensor>, b: &std::collections::BTreeMap<String, Tensor>| {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: the same tensors");
        for (n, t) in a {
            let diff = (t.to_kind(tch::Kind::Double) - b[n].to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
            assert!(diff <= EXACT, "{what}: {n} differs by {diff}");
        }
    };
    close("weights", &trained(&two), &trained(&zero));
    let opt = |out: &Path| -> std::collections::BTreeMap<String, Tensor> {
        safetensors::read_file(&out.join("checkpoint/optimizer.safetensors")).unwrap().into_iter().collect()
    };
    close("AdamW's moments", &opt(&two), &opt(&zero));

    let mut stop = cfg("stopped");
    stop.train.stop_after = Some(4);
    let (ok, err) = train_rm_cli(&stop, &["--nproc", "2", "--zero1"]);
    assert!(!ok && err.contains("train.stop_after"), "{err}");
    stop.train.stop_after = None;
    let (ok, err) = train_rm_cli(&stop, &["--resume"]);
    assert!(ok, "{err}");
    close("resumed on one process", &trained(&two), &trained(&d.path().join("stopped")));

    let (ok, err) = train_rm_cli(&cfg("alone"), &["--zero1"]);
    assert!(!ok && err.contains("--zero1") && err.contains("--nproc"), "{err}");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}
