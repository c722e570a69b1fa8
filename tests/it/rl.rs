//! The RL engine end to end on a tiny world: a word-level tokenizer, a tiny random policy, a rule
//! reward. Learning signal per algorithm; bit-identical resume; the NaN guard. And R2M on top.
use crate::common::{python, tmpdir};
use r2m::data::PromptExample;
use r2m::r2m::{Method, R2mConfig, R2mSource};
use r2m::reward::RewardModel;
use r2m::rl::budget::Count;
use r2m::rl::config::{Algo, RewardKind, RlConfig};
use r2m::rl::reward_source::{RewardSource, RuleSource};
use r2m::rl::trainer::{run, Run};
use r2m::testbed::TestbedPrompt;
use r2m::train::Trainable;
use serde_json::Value;
use std::path::Path;
use tch::Device;

/// A tiny world in `dir`: `policy/` (tiny Llama + word-level tokenizer), `rm/` (tiny Llama
/// sequence classifier, same tokenizer), `prompts.jsonl`.
pub fn tiny_world(dir: &Path) {
    world(dir, "llama")
}

/// `kind` "llama": as above; "mixed": a Qwen3 policy (D 32) and a Gemma 3 reward model (D 48,
/// sliding and global layers).
fn world(dir: &Path, kind: &str) {
    python(
        r###"
import sys, os, json, torch, transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
d = sys.argv[1]
words = ["<pad>", "<eos>", "yes", "no"] + [f"w{i}" for i in range(60)]
vocab = {w: i for i, w in enumerate(words)}
tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
tok.add_special_tokens(["<pad>", "<eos>"])
def save_tok(p):
    os.makedirs(p, exist_ok=True)
    tok.save(os.path.join(p, "tokenizer.json"))
    json.dump({"eos_token": "<eos>", "pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast"},
              open(os.path.join(p, "tokenizer_config.json"), "w"))
torch.manual_seed(0)
ids = dict(eos_token_id=1, pad_token_id=0, bos_token_id=None)
if sys.argv[2] == "llama":
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, **ids)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d + "/policy", safe_serialization=True)
    cfg.num_labels = 1
    transformers.LlamaForSequenceClassification(cfg).save_pretrained(d + "/rm", safe_serialization=True)
else:
    cfg = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64, **ids)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(d + "/policy", safe_serialization=True)
    cfg = transformers.Gemma3TextConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=64, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"], num_labels=1, **ids)
    transformers.Gemma3TextForSequenceClassification(cfg).save_pretrained(d + "/rm", safe_serialization=True)
save_tok(d + "/policy")
save_tok(d + "/rm")
with open(d + "/prompts.jsonl", "w") as f:
    for i in range(40):
        f.write(json.dumps({"prompt": " ".join(f"w{(i * 7 + j) % 60}" for j in range(3 + i % 4))}) + "\n")
"###,
        &[dir.to_str().unwrap(), kind],
    );
}

pub fn tiny_cfg(dir: &Path, algo: Algo, out: &str) -> RlConfig {
    let mut c = RlConfig::default();
    c.out = dir.join(out);
    c.device = "cpu".into();
    c.policy.model = dir.join("policy").to_str().unwrap().into();
    c.policy.trainable = Trainable::All;
    c.policy.chat = false;
    c.policy.lr = 3e-3;
    c.reward.kind = RewardKind::Rm;
    c.reward.model = dir.join("rm").to_str().unwrap().into();
    c.data.prompts = dir.join("prompts.jsonl").to_str().unwrap().into();
    c.data.eval_prompts = Some(c.data.prompts.clone());
    c.rl.algo = algo;
    c.rl.steps = 12;
    c.rl.prompts_per_step = 4;
    c.rl.group_size = 4;
    c.rl.temperature = 1.0;
    c.rl.max_new_tokens = 8;
    c.rl.minibatch = 8;
    c.rl.grad_accum = Count::Fixed(2);
    c.rl.eval_every = 5;
    c.rl.eval_prompts = 4;
    c.rl.save_every = 4;
    c
}

/// Rule reward: the fraction of response words that are "yes".
fn yes_rule() -> Box<dyn RewardSource> {
    Box::new(RuleSource {
        name: "yes".into(),
        f: |_: &PromptExample, r: &str, _| {
            let w: Vec<&str> = r.split_whitespace().collect();
            w.iter().filter(|x| **x == "yes").count() as f64 / w.len().max(1) as f64
        },
    })
}

fn mean_reward(metrics: &Path, steps: std::ops::Range<usize>) -> f64 {
    let recs = r2m::metrics::read_jsonl(metrics).unwrap();
    let v: Vec<f64> = recs[steps].iter().map(|r| r["reward"].as_f64().unwrap()).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn every_algorithm_raises_a_rule_reward() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    for algo in [Algo::Rloo, Algo::Grpo, Algo::ReinforcePp, Algo::Remax] {
        let mut c = tiny_cfg(d.path(), algo, &format!("{algo:?}"));
        c.rl.steps = 20;
        c.rl.eval_every = 0;
        c.rl.beta = Some(0.0);
        let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
        let m = run(&mut r, false, false).unwrap();
        let (first, last) = (mean_reward(&m, 0..4), mean_reward(&m, 16..20));
        assert!(last > 2.0 * first + 0.05, "{algo:?}: reward {first:.3} -> {last:.3}");
    }
}

/// A metric source for tests: the number of "yes" words in the response.
struct YesCount;

impl r2m::rl::reward_source::MetricSource for YesCount {
    fn name(&self) -> &'static str {
        "yes_count"
    }
    fn scores(
        &self,
        _: &[&PromptExample],
        responses: &[String],
        _: &[bool],
        _: Option<&[Option<r2m::rl::reward_source::ResponseLogprobs>]>,
    ) -> Result<tch::Tensor, r2m::Error> {
        let v: Vec<f32> = responses.iter().map(|r| r.split_whitespace().filter(|w| *w == "yes").count() as f32).collect();
        Ok(tch::Tensor::from_slice(&v))
    }
}

/// A run shares another run's evaluation of pi_init (`rl.pi_init_eval_from`) only after its own
/// first sampling call of it agrees: under another algorithm with the same seed it takes the
/// other run's rows (a mark planted past that call shows up in its file) and they equal its own
/// evaluation; with another seed the first call disagrees and it evaluates pi_init itself.
#[test]
fn pi_init_evaluation_is_shared_only_where_it_agrees() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let cfg = |algo: Algo, out: &str, seed: u64, from: Option<&Path>| {
        let mut c = tiny_cfg(d.path(), algo, out);
        c.seed = seed;
        c.rl.steps = 1;
        c.rl.eval_every = 1;
        c.rl.final_eval_prompts = Some(10);
        c.rl.generation_batch = Count::Fixed(4);
        c.rl.pi_init_eval_from = from.map(Path::to_path_buf);
        c
    };
    let init_rows = |c: &RlConfig| -> Vec<Value> {
        let e = r2m::metrics::read_jsonl(&c.out.join("eval.jsonl")).unwrap();
        e.into_iter().filter(|x| x["step"] == -1).map(Value::Object).collect()
    };
    let go = |c: &RlConfig| {
        let mut r = build(c, |_| Ok(yes_rule()), Some(Box::new(YesCount)), Device::Cpu).unwrap();
        run(&mut r, false, false).unwrap();
    };
    let a = cfg(Algo::Grpo, "a", 1, None);
    go(&a);
    // A mark on a row the sharing run does not sample itself (the first call is rows 0-3).
    let path = a.out.join("eval.jsonl");
    let text = std::fs::read_to_string(&path).unwrap().replacen("\"prompt\":9,", "\"prompt\":9,\"mark\":1,", 1);
    std::fs::write(&path, text).unwrap();
    let marked = init_rows(&a);
    assert_eq!(marked[9]["mark"], 1);

    let b = cfg(Algo::Rloo, "b", 1, Some(&path));
    go(&b);
    assert_eq!(init_rows(&b), marked, "the rows are the other run's");
    let own = cfg(Algo::Rloo, "own", 1, None);
    go(&own);
    let mut unmarked = marked.clone();
    unmarked[9].as_object_mut().unwrap().remove("mark");
    assert_eq!(init_rows(&own), unmarked, "and equal this run's own evaluation");

    // A smaller evaluation (9 prompts: two whole calls, one cut short) starts a larger one: its
    // whole calls are kept (a mark in the first, which is not sampled again, shows up), the rest is
    // sampled here.
    let mut nine = cfg(Algo::Grpo, "nine", 1, None);
    nine.rl.final_eval_prompts = Some(9);
    go(&nine);
    let small = nine.out.join("eval.jsonl");
    let text = std::fs::read_to_string(&small).unwrap().replacen("\"prompt\":2,", "\"prompt\":2,\"mark\":2,", 1);
    std::fs::write(&small, text).unwrap();
    let grown = cfg(Algo::Rloo, "grown", 1, Some(&small));
    go(&grown);
    let mut expect = unmarked.clone();
    expect[2].as_object_mut().unwrap().insert("mark".into(), 2.into());
    assert_eq!(init_rows(&grown), expect, "the smaller evaluation's whole calls, then this run's rows");

    let other_seed = cfg(Algo::Rloo, "c", 2, Some(&path));
    go(&other_seed);
    let c_rows = init_rows(&other_seed);
    assert_ne!(c_rows[..4], unmarked[..4]);
    let own2 = cfg(Algo::Rloo, "own2", 2, None);
    go(&own2);
    assert_eq!(c_rows, init_rows(&own2), "another seed evaluates pi_init itself");
}

/// The evaluations the results compare (pi_init's and the last step's) use `final_eval_prompts`,
/// the curve's between them `eval_prompts` (the first of the same prompts), and each win rate
/// pairs a step's rows with pi_init's on the same prompts. A final size below the curve's is refused.
#[test]
fn final_evaluations_use_more_prompts_than_the_curve() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = tiny_cfg(d.path(), Algo::Grpo, "final-eval");
    c.rl.steps = 3;
    c.rl.eval_every = 1;
    c.rl.eval_prompts = 4;
    c.rl.final_eval_prompts = Some(10);
    let mut r = build(&c, |_| Ok(yes_rule()), Some(Box::new(YesCount)), Device::Cpu).unwrap();
    let m = r2m::metrics::read_jsonl(&run(&mut r, false, false).unwrap()).unwrap();
    let e = r2m::metrics::read_jsonl(&c.out.join("eval.jsonl")).unwrap();
    let count = |t: i64| e.iter().filter(|x| x["step"] == t).count();
    assert_eq!([count(-1), count(0), count(1), count(2)], [10, 4, 4, 10]);
    let prompts = |t: i64| e.iter().filter(|x| x["step"] == t).map(|x| x["prompt"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(prompts(0), (0..4).collect::<Vec<_>>());
    assert_eq!(prompts(2), (0..10).collect::<Vec<_>>());
    for x in &m {
        let w = x["eval/win_rate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&w), "{x:?}");
    }
    c.rl.final_eval_prompts = Some(3);
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(err.contains("rl.final_eval_prompts = 3") && err.contains("rl.eval_prompts = 4"), "{err}");
}

/// A finished run whose config now evaluates more prompts (`rl.final_eval_prompts` raised) is
/// resumed from its final checkpoint and extends pi_init's and the last step's evaluations: it
/// samples the new prompts (and the last whole call made earlier again, to check it) and ends with
/// the rows and eval metrics of a run that evaluated that many prompts from the start, R2M's
/// frozen-RM column included. A stored row the checkpoint does not reproduce stops it, and the
/// rows and metrics of that step stay as they were.
#[test]
fn a_finished_run_extends_its_evaluations_when_they_grow() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let make = |out: &str, n: usize| {
        let mut c = tiny_cfg(d.path(), Algo::Grpo, out);
        c.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 1e-3, ..Default::default() });
        c.policy.trainable = Trainable::Top { layers: 1, head: true };
        c.rl.steps = 2;
        c.rl.eval_every = 1;
        c.rl.generation_batch = Count::Fixed(4);
        c.rl.final_eval_prompts = Some(n);
        c
    };
    let go = |c: &RlConfig, resume: bool| -> anyhow::Result<std::path::PathBuf> {
        let mut r = build(c, source(c), Some(Box::new(YesCount)), Device::Cpu)?;
        run(&mut r, resume, false)
    };
    let full = make("full", 10);
    go(&full, false).unwrap();
    let rows = |c: &RlConfig| r2m::metrics::read_jsonl(&c.out.join("eval.jsonl")).unwrap();
    let close = |what: &str, a: &serde_json::Map<String, Value>, b: &serde_json::Map<String, Value>| {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}");
        for (k, x) in a {
            let same = match (x.as_f64(), b[k].as_f64()) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-5 * p.abs().max(1.0),
                _ => x == &b[k],
            };
            assert!(same, "{what}: {k}: {x} vs {}", b[k]);
        }
    };
    // 8 prompts: whole calls of 4; the extension samples call 1 (prompts 4-7) again and 8-9 new.
    // 6 prompts: the last call was cut short (4 + 2); prompts 4-9 are sampled in whole calls.
    for n in [8, 6] {
        let small = make(&format!("small-{n}"), n);
        go(&small, false).unwrap();
        let count = |e: &[serde_json::Map<String, Value>], t: i64| e.iter().filter(|r| r["step"] == t).count();
        assert_eq!((count(&rows(&small), -1), count(&rows(&small), 1)), (n, n));
        let mut grown = small.clone();
        grown.rl.final_eval_prompts = Some(10);
        go(&grown, true).unwrap();
        let (e, want) = (rows(&grown), rows(&full));
        assert_eq!(e.len(), want.len(), "{n}: rows");
        assert!(e[0].contains_key("reward_frozen_rm"), "{:?}", e[0]);
        for (a, b) in e.iter().zip(&want) {
            close(&format!("{n}: eval row {:?}", (&a["step"], &a["prompt"])), a, b);
        }
        let (m, mw) = (records_without_times(&grown.out.join("metrics.jsonl")), records_without_times(&full.out.join("metrics.jsonl")));
        assert_eq!(m.len(), 2);
        for (a, b) in m.iter().zip(&mw) {
            close(&format!("{n}: metrics of step {}", a["step"]), a, b);
        }
    }
    // A stored row of the call sampled again, changed: the extension stops and writes nothing.
    let small = make("small-tampered", 8);
    go(&small, false).unwrap();
    let path = small.out.join("eval.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let last = text.lines().filter(|l| l.contains("\"step\":1,")).nth(5).unwrap();
    let tampered = text.replace(last, &last.replace("\"finished\":", "\"finished_\":"));
    std::fs::write(&path, &tampered).unwrap();
    let metrics = std::fs::read_to_string(small.out.join("metrics.jsonl")).unwrap();
    let mut grown = small.clone();
    grown.rl.final_eval_prompts = Some(10);
    let err = format!("{:#}", go(&grown, true).unwrap_err());
    assert!(err.contains("step 1 cannot be extended") && err.contains("prompt 5"), "{err}");
    // pi_init's evaluation, extended before, stays extended; the last step's rows are as they were.
    let now = std::fs::read_to_string(&path).unwrap();
    let of_step =
        |text: &str, t: &str| text.lines().filter(|l| l.contains(&format!("\"step\":{t},"))).map(String::from).collect::<Vec<_>>();
    assert_eq!(of_step(&now, "-1").len(), 10);
    assert_eq!(of_step(&now, "1"), of_step(&tampered, "1"));
    assert_eq!(std::fs::read_to_string(small.out.join("metrics.jsonl")).unwrap(), metrics);
}

pub fn records_without_times(p: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    r2m::metrics::read_jsonl(p)
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.retain(|k, _| !k.starts_with("time/") && !k.starts_with("r2m/update_time") && !k.starts_with("r2m/peak_rss"));
            r
        })
        .collect()
}

fn final_policy(out: &Path) -> Vec<(String, tch::Tensor)> {
    r2m::model::load::safetensors::read_file(&out.join("checkpoint/policy.safetensors")).unwrap()
}

/// A run of `c` on its configured prompts, with the reward source `reward` and the metric source
/// `metric`.
fn build<'a>(
    c: &'a RlConfig,
    reward: impl FnOnce(i64) -> anyhow::Result<Box<dyn RewardSource>>,
    metric: Option<Box<dyn r2m::rl::reward_source::MetricSource>>,
    device: Device,
) -> anyhow::Result<Run<'a>> {
    r2m::rl::trainer::build(c, reward, metric, r2m::sources::prompts(c)?, device)
}

fn source(c: &RlConfig) -> impl FnOnce(i64) -> anyhow::Result<Box<dyn RewardSource>> + 'static {
    let c = c.clone();
    move |dp: i64| r2m::sources::reward_source(&c, dp, Device::Cpu)
}

/// Interrupted at step 6 (checkpoint at 4), resumed: weights and metrics equal an uninterrupted run.
fn check_resume(dir: &Path, algo: Algo, with_r2m: Option<Method>) {
    let make = |out: &str| {
        let mut c = tiny_cfg(dir, algo, out);
        if let Some(m) = with_r2m {
            c.r2m = Some(R2mConfig { method: m, d: 16, lr: 1e-3, ..Default::default() });
            // The top block trains: the frozen-trunk path (and R2M's h from it) resumes exactly too.
            c.policy.trainable = Trainable::Top { layers: 1, head: true };
            // Rollouts in calls of 6 rows (6 + 6 + 4, hidden states and trunk merged) and
            // checkpointed blocks: exact resume holds through both.
            c.rl.generation_batch = Count::Fixed(6);
            c.policy.gradient_checkpointing = true;
        }
        c
    };
    let a = make(&format!("{algo:?}-{with_r2m:?}-a"));
    let mut b = make(&format!("{algo:?}-{with_r2m:?}-b"));
    b.rl.stop_after = Some(6);
    let mut b2 = b.clone();
    b2.rl.stop_after = None;
    let ma = {
        let mut ra = build(&a, source(&a), None, Device::Cpu).unwrap();
        run(&mut ra, false, false).unwrap()
    };
    {
        let mut rb = build(&b, source(&b), None, Device::Cpu).unwrap();
        assert!(run(&mut rb, false, false).is_err());
    }
    let mb = {
        let mut rb = build(&b2, source(&b2), None, Device::Cpu).unwrap();
        run(&mut rb, true, false).unwrap()
    };
    let (ra, rb) = (records_without_times(&ma), records_without_times(&mb));
    assert_eq!(ra.len(), rb.len());
    // The eval rows too; pi_init's (step -1) once, read back on resume rather than recomputed.
    let (ea, eb) = (a.out.join("eval.jsonl"), b.out.join("eval.jsonl"));
    assert_eq!(std::fs::read_to_string(&ea).unwrap(), std::fs::read_to_string(&eb).unwrap(), "eval.jsonl differs after resume");
    let init = r2m::metrics::read_jsonl(&eb).unwrap().iter().filter(|r| r["step"] == -1).count();
    assert_eq!(init, 4);
    for (x, y) in ra.iter().zip(&rb) {
        for (k, v) in x {
            assert_eq!(Some(v), y.get(k), "{algo:?}/{with_r2m:?}: step {}: {k} differs after resume", x["step"]);
        }
        assert_eq!(x.len(), y.len(), "{algo:?}/{with_r2m:?}: step {}: keys differ", x["step"]);
    }
    let wb: std::collections::HashMap<String, tch::Tensor> = final_policy(&b.out).into_iter().collect();
    for (n, t) in final_policy(&a.out) {
        assert!(t.equal(&wb[&n]), "{algo:?}/{with_r2m:?}: {n} differs after resume");
    }
    if with_r2m.is_some() {
        let sa = r2m::model::load::safetensors::read_file(&a.out.join("checkpoint/reward_source.safetensors")).unwrap();
        let sb: std::collections::HashMap<String, tch::Tensor> =
            r2m::model::load::safetensors::read_file(&b.out.join("checkpoint/reward_source.safetensors")).unwrap().into_iter().collect();
        for (n, t) in sa {
            assert!(t.equal(&sb[&n]), "R2M state {n} differs after resume");
        }
    }
}

/// A Qwen3 policy scored by a Gemma 3 reward model of another width, with R2M reading the
/// policy's hidden states (D_p 32) into the RM's (D_rm 48): the run goes to the end and resumes.
#[test]
fn r2m_across_architectures_and_widths() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    world(d.path(), "mixed");
    // The decoder RM is first trained (BT, top block + head) on a few pairs written through a chat
    // template of its own, which the trained RM keeps for RL's scoring.
    let pairs = d.path().join("pairs.jsonl");
    let lines: Vec<String> = (0..24)
        .map(|i| {
            let p = format!("w{} w{}", i % 50, (i * 3) % 50);
            serde_json::json!({"prompt": p, "chosen": "yes yes", "rejected": format!("no w{}", i % 50)}).to_string()
        })
        .collect();
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let template = d.path().join("turns.jinja");
    std::fs::write(&template, "{% for m in messages %}w5{{ 8 if m['role'] == 'user' else 9 }} {{ m['content'] }} w59 {% endfor %}")
        .unwrap();
    let mut t = r2m::reward::train::TrainRmConfig::default();
    t.model = d.path().join("rm").to_str().unwrap().into();
    t.out = d.path().join("rm-trained");
    t.device = "cpu".into();
    t.data.train = pairs;
    t.data.eval_fraction = 0.25;
    t.data.chat_template = Some(template);
    t.train.epochs = 3;
    t.train.lr = 3e-3;
    t.train.trainable_layers = Some(1);
    let s = r2m::reward::train::run(&t, false, false).unwrap();
    assert!(s.eval_accuracy > 0.8, "the decoder RM learns the pairs: held-out accuracy {}", s.eval_accuracy);
    let tc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.model_dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("w59"), "the trained RM keeps its template: {tc}");

    let mut c = tiny_cfg(d.path(), Algo::Grpo, "mixed");
    c.reward.model = s.model_dir.to_str().unwrap().into();
    c.rl.steps = 4;
    c.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 1e-3, ..Default::default() });
    let mut r = build(&c, source(&c), None, Device::Cpu).unwrap();
    let m = run(&mut r, false, false).unwrap();
    let recs = r2m::metrics::read_jsonl(&m).unwrap();
    assert_eq!(recs.len(), 4);
    for rec in &recs {
        let w = rec["r2m/w"].as_f64().unwrap();
        assert!(rec["reward"].as_f64().unwrap().is_finite() && (0.0..=1.0).contains(&w), "{rec:?}");
        // The regime R2M runs in: a decoder's last hidden state (not a unit-norm embedding), and
        // the cross-attention's output beside it.
        let (hl, hh, ratio) =
            (rec["r2m/hlast_norm"].as_f64().unwrap(), rec["r2m/hhat_norm"].as_f64().unwrap(), rec["r2m/hhat_norm_ratio"].as_f64().unwrap());
        assert!(hl > 1.5 && hh > 0.0 && (hh / hl - ratio).abs() < 1e-9 * ratio.max(1.0), "{rec:?}");
    }
    let policy = r2m::model::DecoderConfig::from_file(&d.path().join("policy/config.json")).unwrap();
    let rm = r2m::model::DecoderConfig::from_file(&s.model_dir.join("config.json")).unwrap();
    assert_eq!((policy.arch.model_type(), policy.hidden_size, rm.arch.model_type(), rm.hidden_size), ("qwen3", 32, "gemma3_text", 48));
}

#[test]
fn rloo_and_grpo_resume_bit_identically() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    check_resume(d.path(), Algo::Rloo, None);
    check_resume(d.path(), Algo::Grpo, None);
}

#[test]
fn r2m_with_rloo_and_grpo_finishes_and_resumes_bit_identically() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    check_resume(d.path(), Algo::Rloo, Some(Method::R2m));
    check_resume(d.path(), Algo::Grpo, Some(Method::R2m));
}

/// R2M's online methods under ReMax and REINFORCE++ (the paper compares against both): ReMax's
/// greedy baseline is scored aside, so the update still ranks the annotation's rows. Every R2M
/// method logs the frozen proxy's score beside its own reward (the report's proxy column): equal
/// at step 0 (w = 1, phi = the RM's head) and at pi_init's eval, apart after updates; vanilla logs
/// no second score.
#[test]
fn r2m_methods_run_with_remax_and_reinforce_pp_and_log_the_frozen_proxy() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let cases = [
        (Algo::Remax, Method::R2m),
        (Algo::Remax, Method::IterativeHead),
        (Algo::ReinforcePp, Method::R2mNoGre),
        (Algo::Rloo, Method::Vanilla),
    ];
    for (algo, method) in cases {
        let mut c = tiny_cfg(d.path(), algo, &format!("{algo:?}-{method:?}"));
        c.rl.steps = 3;
        c.rl.eval_every = 2;
        c.r2m = Some(R2mConfig { method, d: 16, lr: 1e-2, ..Default::default() });
        let mut r = build(&c, source(&c), None, Device::Cpu).unwrap();
        let mpath = run(&mut r, false, false).unwrap_or_else(|e| panic!("{algo:?} + {method:?}: {e:#}"));
        let m = r2m::metrics::read_jsonl(&mpath).unwrap();
        let e = r2m::metrics::read_jsonl(&c.out.join("eval.jsonl")).unwrap();
        assert_eq!(m.len(), 3);
        if method == Method::Vanilla {
            assert!(m.iter().all(|x| !x.contains_key("reward_frozen_rm")) && e.iter().all(|x| !x.contains_key("reward_frozen_rm")));
            continue;
        }
        let f = |x: &serde_json::Map<String, serde_json::Value>, k: &str| {
            x[k].as_f64().unwrap_or_else(|| panic!("{algo:?} + {method:?}: no {k}"))
        };
        assert!(f(&m[2], "r2m/loss").is_finite());
        // The cross-attention's diagnostics, only where it runs (R2M's methods, not iterative-head).
        if method.uses_feedback() {
            let ent = f(&m[2], "r2m/attn_entropy");
            assert!((0.0..=1.0 + 1e-9).contains(&ent), "{ent}");
            assert!(f(&m[2], "r2m/hhat_norm_ratio") > 0.0 && f(&m[2], "r2m/score_std_hlast") > 0.0);
            assert!(f(&m[2], "r2m/score_std_hhat").is_finite());
            // The H_hat term's effect on the within-group ranking: none at step 0 (w = 1).
            assert_eq!(f(&m[0], "r2m/group_agree_no_hhat"), 1.0, "{:?}", m[0]);
            assert!((f(&m[0], "r2m/group_corr_no_hhat") - 1.0).abs() < 1e-6);
            assert!((0.0..=1.0).contains(&f(&m[2], "r2m/group_agree_no_hhat")));
            assert!(f(&m[2], "r2m/group_corr_no_hhat").abs() <= 1.0 + 1e-9);
        } else {
            assert!(!m[2].contains_key("r2m/attn_entropy"));
        }
        assert!((f(&m[0], "reward") - f(&m[0], "reward_frozen_rm")).abs() < 1e-5, "{algo:?} + {method:?}: step 0 scores like the RM");
        assert_eq!(f(&m[0], "reward_frozen_rm/top_agree"), 1.0);
        assert_eq!(f(&m[0], "reward_frozen_rm/group_agree"), 1.0);
        assert!((f(&m[0], "reward_frozen_rm/group_corr") - 1.0).abs() < 1e-4, "{:?}", m[0]);
        assert!((0.0..=1.0).contains(&f(&m[2], "reward_frozen_rm/group_agree")));
        assert!((f(&m[0], "reward_frozen_rm/corr") - 1.0).abs() < 1e-4, "{:?}", m[0]);
        for row in e.iter().filter(|x| x["step"] == -1) {
            assert!((f(row, "reward") - f(row, "reward_frozen_rm")).abs() < 1e-5, "pi_init is scored like the RM: {row:?}");
        }
        let moved = e.iter().filter(|x| x["step"] == 2).any(|x| (f(x, "reward") - f(x, "reward_frozen_rm")).abs() > 1e-6);
        assert!(moved, "{algo:?} + {method:?}: after updates R2M's reward differs from the frozen RM's");
    }
}

/// `r2m.rank_by = "frozen"` picks the BT term's winner and loser by the frozen proxy instead of R2M's
/// own annotation rewards: the same update at step 0 (w = 1: the two rankings are one), another
/// once the H_hat term is in the rewards.
#[test]
fn r2m_rank_by_frozen_changes_the_update_only_once_h_hat_ranks() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut runs = vec![];
    for rank_by in [r2m::r2m::RankBy::Own, r2m::r2m::RankBy::Frozen] {
        let mut c = tiny_cfg(d.path(), Algo::Grpo, &format!("grpo-{rank_by:?}"));
        c.rl.steps = 4;
        c.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 5e-2, omega: 0.0, rank_by, ..Default::default() });
        let mut r = build(&c, source(&c), None, Device::Cpu).unwrap();
        runs.push(r2m::metrics::read_jsonl(&run(&mut r, false, false).unwrap()).unwrap());
    }
    let bt = |m: &Vec<serde_json::Map<String, serde_json::Value>>, i: usize| m[i]["r2m/bt"].as_f64().unwrap();
    assert_eq!(bt(&runs[0], 0), bt(&runs[1], 0), "step 0: one ranking");
    assert!(
        (1..4).any(|i| (bt(&runs[0], i) - bt(&runs[1], i)).abs() > 1e-7),
        "the switch changed nothing: {:?}",
        (0..4).map(|i| (bt(&runs[0], i), bt(&runs[1], i))).collect::<Vec<_>>()
    );
}

/// r2m-no-train never updates its modules, yet its H_hat term shapes the rewards: it logs what that
/// term does to the within-group ranking like R2M does (1 at step 0, where w = 1), and no loss.
#[test]
fn r2m_no_train_logs_the_h_hat_terms_effect_on_the_ranking() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = tiny_cfg(d.path(), Algo::Grpo, "grpo-no-train");
    c.rl.steps = 3;
    c.r2m = Some(R2mConfig { method: Method::R2mNoTrain, d: 16, ..Default::default() });
    let mut r = build(&c, source(&c), None, Device::Cpu).unwrap();
    let m = r2m::metrics::read_jsonl(&run(&mut r, false, false).unwrap()).unwrap();
    assert_eq!(m.len(), 3);
    let f = |i: usize, k: &str| m[i][k].as_f64().unwrap_or_else(|| panic!("step {i}: no {k}: {:?}", m[i]));
    assert!((f(0, "r2m/group_corr_no_hhat") - 1.0).abs() < 1e-6 && f(0, "r2m/group_agree_no_hhat") == 1.0);
    assert!(f(2, "r2m/w") < 1.0);
    assert!(f(2, "r2m/group_corr_no_hhat").abs() <= 1.0 + 1e-9 && (0.0..=1.0).contains(&f(2, "r2m/group_agree_no_hhat")));
    assert!(m.iter().all(|x| !x.contains_key("r2m/loss")), "no-train never updates");
}

/// The frozen trunk (block 0 + embeddings, computed once per rollout and shared with the
/// reference) changes nothing but float rounding: one step with and without it.
#[test]
fn frozen_trunk_cache_matches_full_passes() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let one_step = |cache: bool| {
        let mut c = tiny_cfg(d.path(), Algo::Grpo, &format!("trunk-{cache}"));
        c.policy.trainable = Trainable::Top { layers: 1, head: true };
        c.rl.trunk_cache = cache;
        c.rl.steps = 1;
        c.rl.eval_every = 0;
        let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
        assert_eq!((r.trunk_layers, r.reference_shares_trunk), if cache { (1, true) } else { (0, false) });
        // pi_init's eval: with the cache the reference reads the generator's trunk.
        let (_, rows) = r.evaluate(-1).unwrap();
        let m = r.step(0).unwrap();
        let w: Vec<tch::Tensor> = r.opt.params.iter().map(|(_, t)| t.detach().copy()).collect();
        (m, w, rows)
    };
    let (ma, wa, ea) = one_step(true);
    let (mb, wb, eb) = one_step(false);
    assert_eq!(ea.len(), 4);
    for (x, y) in ea.iter().zip(&eb) {
        for k in ["reward", "length", "finished", "id"] {
            assert_eq!(x[k], y[k], "eval {k} differs with the trunk cache");
        }
        let (kx, ky) = (x["kl"].as_f64().unwrap(), y["kl"].as_f64().unwrap());
        assert!((kx - ky).abs() <= 1e-4, "eval kl: {kx} with the trunk cache, {ky} without");
    }
    for k in ["reward", "kl", "loss", "kl_term", "grad_norm", "entropy"] {
        let (x, y) = (ma[k].as_f64().unwrap(), mb[k].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{k}: {x} with the trunk cache, {y} without");
    }
    for (x, y) in wa.iter().zip(&wb) {
        assert!((x - y).abs().max().double_value(&[]) < 1e-5);
    }
}

#[test]
fn gold_fluency_from_the_reference_pass_matches_the_golds_own() {
    // The testbed's setting: the policy is SmolLM2 with a frozen trunk, and the gold's fluency LM
    // is the same model, so the rollout's reference pass gives the gold its log-probs.
    // `collect` samples from libtorch's global RNG (seeded per `generate` call): tests that sample
    // in this process take turns, or one's draws land in the other's sequence.
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    let mut c = RlConfig::default();
    c.out = d.path().join("run");
    c.device = "cpu".into();
    c.policy.trainable = Trainable::Top { layers: 2, head: false };
    c.data.testbed_train = 8;
    c.data.testbed_test = 4;
    c.rl.prompts_per_step = 3;
    c.rl.group_size = 2;
    c.rl.max_new_tokens = 24;
    c.rl.minibatch = 6;
    c.reward.kind = RewardKind::Gold; // validation only: the step's reward is the rule below
    c.rl.eval_prompts = 4;
    let gold = r2m::sources::metric_source(&c, Device::Cpu).unwrap();
    let mut r = build(&c, |_| Ok(yes_rule()), gold, Device::Cpu).unwrap();
    assert!(r.metric_reads_reference && r.reference_shares_trunk);
    let ro = r.collect(0, &mut r2m::rl::Clock::default()).unwrap();
    let known = ro.reference_logprobs.as_ref().expect("fluency log-probs from the reference pass");
    let gold = r2m::testbed::Gold::load(c.reward.gold.clone(), Device::Cpu).unwrap();
    let tps: Vec<_> = ro.prompt_idx.iter().map(|&i| r2m::testbed::source::testbed_prompt(&r.train_prompts[i]).unwrap()).collect();
    let refs: Vec<&TestbedPrompt> = tps.iter().collect();
    let texts: Vec<&str> = ro.responses.iter().map(|s| s.as_str()).collect();
    // The rollout's tokens are what the gold would score for (nearly) every response.
    let mut agree = 0;
    for (i, k) in known.iter().enumerate() {
        let (p, y) = gold.fluency_tokens(refs[i], texts[i]).unwrap().unwrap();
        let k = k.as_ref().unwrap();
        agree += usize::from(k.prompt == p && k.response.starts_with(&y));
    }
    assert!(agree * 2 > known.len(), "{agree} of {} rollouts tokenized as the gold would", known.len());
    let own = gold.score(&refs, &texts, &ro.finished).unwrap();
    let with = gold.score_with(&refs, &texts, &ro.finished, Some(known)).unwrap();
    let mut worst = 0f64;
    for (i, (a, b)) in own.iter().zip(&with).enumerate() {
        assert_eq!(a.mean_logprob.is_some(), b.mean_logprob.is_some(), "{i}");
        if let (Some(u), Some(v)) = (a.mean_logprob, b.mean_logprob) {
            assert!((u - v).abs() < 1e-4, "row {i}: own {u} from the reference pass {v}");
            worst = worst.max((u - v).abs());
        }
        assert!((a.total - b.total).abs() < 1e-4, "row {i}: {a:?} vs {b:?}");
    }
    eprintln!("{agree} of {} rollouts reused; mean log-prob at most {worst:.2e} from the gold's own pass", known.len());
    // And the held-out eval, which takes the same path, reports the gold's own score.
    let (m, rows) = r.evaluate(0).unwrap();
    assert_eq!(rows.len(), 4);
    assert!(m["eval/gold"].as_f64().unwrap().is_finite() && m["time/eval/gold"].as_f64().unwrap() > 0.0, "{m:?}");
}

#[test]
fn gradient_checkpointing_trains_the_same_policy() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let two_steps = |ckpt: bool| {
        let mut c = tiny_cfg(d.path(), Algo::Grpo, &format!("ckpt-{ckpt}"));
        c.policy.trainable = Trainable::Top { layers: 2, head: false };
        c.policy.gradient_checkpointing = ckpt;
        c.rl.steps = 2;
        c.rl.eval_every = 0;
        if !ckpt {
            // Budgets from free memory: on this machine everything fits at once (16 rollout
            // rows; the eval's 4), in one micro-batch.
            c.rl.grad_accum = Count::Auto;
            c.rl.generation_batch = Count::Auto;
        }
        let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
        assert_eq!(r.policy.model.checkpointing, ckpt);
        let want = if ckpt { (16, 2) } else { (16, 1) };
        assert_eq!((r.budget.generation_batch, r.budget.grad_accum), want);
        let before = r2m::ffi::BLOCK_RUNS.load(std::sync::atomic::Ordering::Relaxed);
        let m: Vec<_> = (0..2).map(|t| r.step(t).unwrap()).collect();
        let runs = r2m::ffi::BLOCK_RUNS.load(std::sync::atomic::Ordering::Relaxed) - before;
        let w: Vec<tch::Tensor> = r.opt.params.iter().map(|(_, t)| t.detach().copy()).collect();
        (m, w, runs)
    };
    let (ma, wa, runs) = two_steps(true);
    let (mb, wb, none) = two_steps(false);
    assert!(runs > 0 && none == 0, "checkpointed block runs: {runs} with, {none} without");
    for (a, b) in ma.iter().zip(&mb) {
        for k in ["reward", "kl", "loss", "grad_norm", "entropy"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{k}: {x} with checkpointing, {y} without");
        }
    }
    for (x, y) in wa.iter().zip(&wb) {
        assert!((x - y).abs().max().double_value(&[]) < 1e-5);
    }
}

/// A GRPO run on the tiny world whose reward turns to `bad()` at step 5's annotation (16 scores
/// per step, plus 4 per eval: pi_init's (step -1) and step 0's come before it). Returns the run's
/// error; asserts that the checkpoint of step 4 is intact and nothing half-written
/// is left.
fn run_failing_at_step_5(name: &str, bad: fn() -> f64) -> String {
    let d = tmpdir();
    tiny_world(d.path());
    let c = tiny_cfg(d.path(), Algo::Grpo, name);
    let mut calls = 0;
    let src = RuleSource {
        name: format!("{name}-at-step-5"),
        f: move |_: &PromptExample, _: &str, _| {
            calls += 1;
            if calls > 16 * 5 + 4 * 2 {
                bad()
            } else {
                0.5
            }
        },
    };
    let mut r = build(&c, move |_| Ok(Box::new(src) as Box<dyn RewardSource>), None, Device::Cpu).unwrap();
    let e = format!("{:#}", run(&mut r, false, false).unwrap_err());
    let st: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(c.out.join("checkpoint/state.json")).unwrap()).unwrap();
    assert_eq!(st["step"], 4, "{name}: the last saved checkpoint");
    assert!(!c.out.join("checkpoint.tmp").exists());
    assert_eq!(final_policy(&c.out).len(), r.opt.params.len());
    e
}

#[test]
fn nan_reward_stops_the_run_and_keeps_the_last_checkpoint() {
    let _rng = crate::common::torch_rng_lock();
    let e = run_failing_at_step_5("nan", || f64::NAN);
    assert!(e.contains("step 5") && e.contains("reward annotation") && e.contains("NaN"), "{e}");
}

/// Running out of memory inside a step (simulated: libtorch's CUDA message from the reward) stops
/// the run with an error that names the step and the settings that size it, not a crash; the
/// checkpoint of the last saved step is intact.
#[test]
fn out_of_memory_in_a_step_is_a_clear_error() {
    let _rng = crate::common::torch_rng_lock();
    let e = run_failing_at_step_5("oom", || {
        panic!("called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB\\nException raised from malloc\")")
    });
    assert!(
        e.contains("step 5")
            && e.contains("out of memory")
            && e.contains("rl.grad_accum")
            && e.contains("gradient_checkpointing")
            && e.contains("--resume"),
        "{e}"
    );
    assert!(!e.contains("Exception raised from"), "the C++ backtrace leaked into the error: {e}");
}

/// R2M's score at t = 0 equals the vanilla RM's exactly; the update changes only the
/// cross-attention and the head; the policy's forward count per step is the same with R2M.
#[test]
fn r2m_invariants() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let dir = d.path();
    let rm_path = dir.join("rm");
    let rm = RewardModel::load(rm_path.to_str().unwrap(), 0, Device::Cpu).unwrap();
    let backbone_before: Vec<(String, tch::Tensor)> = rm.all_params().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();

    // Vanilla vs R2M on the same rollout, step 0.
    let mut vanilla = tiny_cfg(dir, Algo::Rloo, "v");
    vanilla.rl.steps = 2;
    vanilla.rl.eval_every = 0;
    let mut with = vanilla.clone();
    with.out = dir.join("r");
    with.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 1e-2, ..Default::default() });
    let mut rv = build(&vanilla, |dp| r2m::sources::reward_source(&vanilla, dp, Device::Cpu), None, Device::Cpu).unwrap();
    let mut rr = build(&with, |dp| r2m::sources::reward_source(&with, dp, Device::Cpu), None, Device::Cpu).unwrap();
    let mut clock = r2m::rl::Clock::default();
    let roll = rr.collect(0, &mut clock).unwrap();
    let prompts: Vec<&PromptExample> = roll.prompt_idx.iter().map(|&i| &rr.train_prompts[i]).collect();
    let input = r2m::rl::reward_source::RewardInput {
        prompts,
        responses: &roll.responses,
        finished: &roll.finished,
        hidden: roll.hidden.as_ref().map(|h| (h, &roll.seq_mask)),
        step: 0,
        total_steps: 2,
        group_size: 4,
    };
    let s_r2m = rr.reward.score(&input).unwrap();
    let s_van = rv.reward.score(&input).unwrap();
    assert!(s_r2m.equal(&s_van), "at t = 0 R2M must score exactly like the vanilla RM");

    // The update moves only R2M's parameters.
    let mut src = R2mSource::new(R2mConfig { method: Method::R2m, d: 16, lr: 1e-2, ..Default::default() }, rm, 32, 0, 1024, 16).unwrap();
    let mut input2 = input;
    input2.step = 1;
    let ann = src.score(&input2).unwrap();
    let before: Vec<(String, tch::Tensor)> = src.params.named().iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect();
    let u = r2m::rl::reward_source::UpdateInput {
        annotation_rewards: &ann,
        hidden: roll.hidden.as_ref().map(|h| (h, &roll.seq_mask)),
        step: 1,
        total_steps: 2,
        group_size: 4,
        ranks: None,
    };
    let m = src.update(&u).unwrap();
    assert!(m["r2m/loss"].as_f64().unwrap().is_finite());
    for (n, t) in &before {
        assert!(!src.params.get_named(n).unwrap().equal(t), "{n} did not change in the R2M update");
    }
    for ((n, t), (_, now)) in backbone_before.iter().zip(src.rm.local().unwrap().all_params()) {
        if n != "score.weight" {
            assert!(now.equal(t), "RM backbone parameter {n} changed");
        }
    }
    assert!(src.rm.head().equal(&backbone_before.iter().find(|(n, _)| n == "score.weight").unwrap().1), "the RM's own head changed");

    // Same number of policy forward passes per step with and without R2M.
    let ref_before: Vec<tch::Tensor> = rr.reference.params.named().iter().map(|(_, t)| t.detach().copy()).collect();
    let (f_v, f_r) = (rv.policy_forwards, rr.policy_forwards);
    rv.step(0).unwrap();
    rr.step(0).unwrap();
    assert_eq!(rv.policy_forwards - f_v, rr.policy_forwards - f_r, "R2M must not add policy forward passes");
    // The reference model is bit-identical after a training step.
    for ((n, t), b) in rr.reference.params.named().iter().zip(&ref_before) {
        assert!(t.equal(b), "reference parameter {n} changed");
    }
}

/// `r2m export --run` turns a run's checkpoint (here LoRA) into an HF folder with the trained
/// policy: the same logits as the policy in memory.
#[test]
fn export_run_writes_the_trained_policy() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = tiny_cfg(d.path(), Algo::Grpo, "lora");
    c.rl.steps = 2;
    c.rl.eval_every = 0;
    c.policy.trainable = Trainable::Lora { rank: 4, alpha: 8.0, targets: vec!["q_proj".into(), "v_proj".into()] };
    c.policy.lr = 3e-2;
    let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
    run(&mut r, false, false).unwrap();
    let out = d.path().join("exported");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
        .args(["export", "--run", c.out.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let back = r2m::model::CausalLm::load_path(out.to_str().unwrap(), Device::Cpu).unwrap().model;
    let ids = tch::Tensor::from_slice(&[5i64, 6, 7, 2]).view([1, 4]);
    let _g = tch::no_grad_guard();
    let want = r.policy.forward(&ids, &ids.ones_like()).unwrap();
    let got = back.forward(&ids, &ids.ones_like()).unwrap();
    let diff = (got - &want).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
    // The adapters did train (otherwise the check above proves nothing).
    let init = r2m::model::CausalLm::load_path(c.policy.model.as_str(), Device::Cpu).unwrap().model;
    assert!((init.forward(&ids, &ids.ones_like()).unwrap() - want).abs().max().double_value(&[]) > 1e-4);
}

/// `eval-rm --feedback-from RUN` (Table 3): the run's R2M scores held-out pairs with the final
/// policy's feedback at w(T); `--untrained` gives the before-training number; both report what the
/// cross-attention does.
#[test]
fn eval_rm_with_feedback_from_an_r2m_run() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = tiny_cfg(d.path(), Algo::Rloo, "fb");
    c.rl.steps = 3;
    c.rl.eval_every = 0;
    c.r2m = Some(R2mConfig { method: Method::R2m, d: 16, lr: 1e-2, omega: 0.0, ..Default::default() });
    {
        let mut r = build(&c, source(&c), None, Device::Cpu).unwrap();
        run(&mut r, false, false).unwrap();
    }
    let pairs = d.path().join("pairs.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"prompt": format!("w{i} w{}", i + 1), "chosen": "yes yes", "rejected": format!("no w{i}")}).to_string())
        .collect();
    std::fs::write(&pairs, lines.join("\n")).unwrap();
    let eval = |extra: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_r2m"))
            .args(["eval-rm", "--device", "cpu", "--json", "--data", pairs.to_str().unwrap(), "--feedback-from", c.out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let trained = eval(&[]);
    let untrained = eval(&["--untrained"]);
    assert_eq!(trained["pairs"], 6);
    let (a, b) = (trained["accuracy"].as_f64().unwrap(), untrained["accuracy"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b));
    // w(T) with omega 0 is 0: the score is the cross-attention's alone.
    assert_eq!(trained["w"].as_f64().unwrap(), 0.0);
    // What the cross-attention does (no --model needed: the run names its RM); training moved it.
    for v in [&trained, &untrained] {
        let e = v["attention"]["attn_entropy"].as_f64().unwrap_or_else(|| panic!("{v}"));
        assert!((0.0..=1.0 + 1e-9).contains(&e) && v["attention"]["hhat_norm_ratio"].as_f64().unwrap() > 0.0, "{v}");
    }
    assert_ne!(trained["attention"]["score_std_hhat"], untrained["attention"]["score_std_hhat"]);
}

/// bf16 autocast (`policy.dtype`, `reward.dtype`; model::precision): the policy learns the rule
/// reward as in f32, with old log-probs from a forward (the generator's differ in bf16) and the
/// reference equal to the initial policy at step 0 (KL 0 up to f32 rounding of the mean); the
/// reward model scores the same texts within bf16 rounding of its f32 scores.
#[test]
fn bf16_autocast_learns_and_scores_near_f32() {
    let _rng = crate::common::torch_rng_lock();
    let d = tmpdir();
    tiny_world(d.path());
    let mut c = tiny_cfg(d.path(), Algo::Rloo, "bf16");
    c.rl.steps = 20;
    c.rl.eval_every = 0;
    c.rl.beta = Some(0.0);
    c.policy.dtype = "bf16".into();
    let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
    assert_eq!(r.policy.precision, r2m::model::precision::Precision::Bf16);
    assert!(!r.logprobs_from_generator(), "auto: a forward in bf16");
    let m0 = r.step(0).unwrap();
    assert!(m0["kl"].as_f64().unwrap().abs() < 1e-6, "policy and reference differ at step 0: {m0:?}");
    assert!(m0["loss"].as_f64().unwrap().is_finite() && m0["grad_norm"].as_f64().unwrap().is_finite(), "{m0:?}");
    drop(r);
    let mut c = tiny_cfg(d.path(), Algo::Rloo, "bf16-run");
    c.rl.steps = 20;
    c.rl.eval_every = 0;
    c.rl.beta = Some(0.0);
    c.policy.dtype = "bf16".into();
    let mut r = build(&c, |_| Ok(yes_rule()), None, Device::Cpu).unwrap();
    let m = run(&mut r, false, false).unwrap();
    let (first, last) = (mean_reward(&m, 0..4), mean_reward(&m, 16..20));
    assert!(last > 2.0 * first + 0.05, "bf16: reward {first:.3} -> {last:.3}");

    let texts: Vec<String> = (0..8).map(|i| (0..4 + i).map(|j| format!("w{}", (i * 5 + j) % 60)).collect::<Vec<_>>().join(" ")).collect();
    let mut rm = RewardModel::load(d.path().join("rm").to_str().unwrap(), 0, Device::Cpu).unwrap();
    let f32_scores = rm.score_texts(&texts, true, 64, 4).unwrap();
    rm.precision = r2m::model::precision::Precision::Bf16;
    let bf16_scores = rm.score_texts(&texts, true, 64, 4).unwrap();
    assert_eq!(bf16_scores.kind(), tch::Kind::Float);
    let diff = (&bf16_scores - &f32_scores).abs().max().double_value(&[]);
    let scale = f32_scores.abs().max().double_value(&[]).max(1e-3);
    assert!(diff > 0.0, "bf16 scores equal f32's exactly: autocast did not apply");
    assert!(diff <= 0.05 * scale + 1e-3, "bf16 scores off by {diff} (scale {scale})");
}
