//! The RL step benchmark: one full RL step of r2m's engine (`r2m::rl::trainer::Run::step`) against
//! TRL's GRPOTrainer / RLOOTrainer on the same machine, side by side in one run, and the cost of
//! R2M over vanilla RL. Results and how to read them: docs/benchmarks.md.
//!
//!   .venv/bin/pip install "trl==1.16.0" "transformers==4.57.1" "torch==2.11.0"  # bench only;
//!                                                       # done by the bench itself when trl is absent
//!   cargo bench --bench rl_step                         # full run (CPU), roughly 20-40 min on 2 cores
//!   cargo bench --bench rl_step -- --quick              # 2 prompts x 2 samples, 8 new tokens, 1 rep
//!   cargo bench --bench rl_step -- --only r2m           # only the R2M overhead (also: grpo, rloo)
//!   target/release/deps/rl_step-<hash> --device cuda    # the same binary on a GPU machine
//!
//! Workload (both sides, from one `RlConfig`): SmolLM2-135M-Instruct, f32, the same weights (the f32
//! HF folder `$R2M_HOME/models/smollm2-135m-instruct-f32` that benches/foundation.rs also exports);
//! n = 8 chat prompts (the same 8 every step, so that both sides pad to the same length) x K = 4
//! samples, exactly 64 new tokens at temperature 0.7, no top-k / top-p (r2m: `rl.ignore_eos`;
//! TRL: `min_new_tokens` = `max_new_tokens`, so both make B x 64 tokens); trainable set: the top 4
//! blocks + the final norm (r2m's `Trainable::Top { layers: 4, head: false }`; in TRL every other
//! parameter has requires_grad False); AdamW lr 1e-5, constant, grad-norm clip 1.0; k = 2 policy
//! epochs (TRL `num_iterations` = 2) of 2 minibatches of 16 sequences (TRL
//! `per_device_train_batch_size` 16, `steps_per_generation` 2, no gradient accumulation): 4
//! optimizer steps per RL step on both sides; beta 0.04 (GRPO, TRL `loss_type` "grpo", scale
//! "group") / 0.05 (RLOO), eps 0.2. Reward: the same reward model on both sides, a SmolLM2-135M
//! backbone with a seeded N(0, 0.02) head written once by r2m (`RewardModel::save`) as the HF
//! `LlamaForSequenceClassification` folder `$R2M_HOME/models/smollm2-135m-bench-rm`, which TRL loads
//! as its `reward_funcs`; one RM batch of B sequences, prompt + response through the chat template on
//! both sides. TRL runs fp32 with gradient checkpointing off (TRL's defaults are bf16 and on).
//!
//! Timed: one full RL step (generation, old log-probs, reference log-probs, reward, advantages, the
//! k epochs of updates). r2m: the wall time of `Run::step(t)`; its `time/*` metrics give the phases.
//! TRL: its own `trainer.train()` loop, paused at every RL-step boundary by a callback that waits for
//! the bench's next request (benches/peer_rl.py), so the step is TRL's real loop (logging included),
//! timed boundary to boundary; wrapped methods give its phases (approximate). Both sides run the same
//! thread count; after one warmup step each, their timed steps alternate (TRL, r2m, r2m, TRL, ...),
//! each recording how many cores other processes kept busy ("other load"); on the CPU a round during
//! which that exceeded `R2M_BENCH_MAX_OTHER_LOAD` cores (default 0.25) is redone. Reported: medians.
//! Before timing, the bench checks that both sides tokenize the prompts identically and train the
//! same number of weights.
//!
//! Not identical, by design of each side: r2m ignores EOS (an EOS may be sampled and decoding goes
//! on) where TRL forbids it until the last token, so the token counts match but not the text; the
//! samplers' random streams differ; TRL computes log-probs with its fused, chunked LM head and in
//! chunks of one minibatch, also the entropy in every training forward; TRL's optimizer is
//! transformers' default (adamw_torch_fused), r2m's its own AdamW with the same hyperparameters.
//! r2m's exported tokenizer folders name the generic PreTrainedTokenizerFast, so the peer loads it
//! with `model_input_names` = input_ids, attention_mask (SmolLM2's own tokenizer class has no
//! token_type_ids either; Llama's generate() rejects them).
//!
//! R2M overhead: the RLOO workload above with `r2m = Some(R2mConfig { method: R2m, .. })`
//! (defaults: d 2048, 1 head) against vanilla (`r2m = None`, the same RM), both in this process,
//! steps interleaved; peak memory: each variant once more in its own child process (this binary
//! re-executed with a hidden `--rss-child`), peak RSS (VmHWM) over the whole process and over the
//! steps alone (VmHWM reset after loading, where /proc/self/clear_refs allows), with glibc's mmap
//! threshold fixed at 1 MiB so that RSS follows the live tensors rather than freed heap memory
//! glibc keeps (an explicit GLIBC_TUNABLES overrides it). On a GPU the RSS is host memory only.
//!
//! Reading it: "TRL / r2m" > 1 means r2m's step is faster (goal: >= 2x); the breakdown says where
//! each side spends its step. "R2M / vanilla" is R2M's cost (goal: <= 1.03 in time and in memory);
//! "R2M update" is the reward source's online update after the policy update (`time/r2m`).
//!
//! Options (env in brackets): --device cpu|cuda[:N] [R2M_BENCH_DEVICE], --quick [R2M_BENCH_QUICK=1],
//! --only grpo,rloo,r2m, --no-peer, --reps R, --dtype f32|bf16 (both sides; bf16: autocast), --gradient-checkpointing (both sides), --warmup W, --prompts N, --group K, --new-tokens T,
//! --model GGUF|DIR, --f32-dir DIR, --rm DIR, --random-weights [--tokenizer-dir DIR] (no model
//! files: seeded random weights of SmolLM2-135M's shape + SmolLM2's tokenizer files), --python PY [R2M_BENCH_PYTHON], --peer-script PATH,
//! --no-install (fail instead of pip-installing trl), --json-out FILE [R2M_BENCH_OUT=dir].
mod common;

use anyhow::{bail, ensure, Context, Result};
use common::{
    device_description, export_f32, git_commit, interleave, median, peak_rss_kb, peer_python, peer_script, reset_peak_rss, timed,
    JsonChild, Rep, Side, QUESTIONS,
};
use r2m::r2m::{Method, R2mConfig};
use r2m::reward::RewardModel;
use r2m::rl::config::{Algo, RewardKind, RlConfig};
use r2m::rl::trainer::Run;
use r2m::train::Trainable;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tch::Device;

/// The TRL release this bench is checked against (next to transformers 4.57.1 and
/// torch 2.11.0, which the pins keep as they are).
const TRL_VERSION: &str = "1.16.0";

struct Opts {
    device: Device,
    device_name: String,
    quick: bool,
    model: Option<PathBuf>,
    f32_dir: Option<PathBuf>,
    rm_dir: Option<PathBuf>,
    /// Seeded random weights of SmolLM2-135M's shape (a machine without the model files), with
    /// the tokenizer files of `tokenizer_dir` (default: the f32 export's folder).
    random_weights: bool,
    tokenizer_dir: Option<PathBuf>,
    python: Option<String>,
    peer_script: Option<PathBuf>,
    peer: bool,
    install: bool,
    grpo: bool,
    rloo: bool,
    overhead: bool,
    json_out: Option<PathBuf>,
    prompts: usize,
    group: usize,
    new_tokens: i64,
    warmup: usize,
    reps: usize,
    /// "f32" or "bf16" on both sides: r2m's policy.dtype and reward.dtype, TRL's `bf16` flag
    /// (autocast over the f32 weights). Not "auto": the peer must be told the same.
    dtype: String,
    /// Activation checkpointing on both sides (r2m's policy.gradient_checkpointing, TRL's
    /// gradient_checkpointing).
    checkpointing: bool,
    /// The arguments as given (for the memory children).
    args: Vec<String>,
    /// Hidden: run one variant of the overhead workload and print its peak RSS (`vanilla` | `r2m`).
    rss_child: Option<String>,
    work_dir: Option<PathBuf>,
}

fn parse_opts() -> Result<Opts> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench (and a filter, if given) to harness = false benches.
    args.retain(|a| a != "--bench");
    let mut o = Opts {
        device: Device::Cpu,
        device_name: env("R2M_BENCH_DEVICE").unwrap_or_else(|| "cpu".into()),
        quick: env("R2M_BENCH_QUICK").is_some_and(|v| v != "0"),
        model: None,
        f32_dir: None,
        rm_dir: None,
        random_weights: false,
        tokenizer_dir: None,
        python: env("R2M_BENCH_PYTHON"),
        peer_script: None,
        peer: true,
        install: true,
        grpo: true,
        rloo: true,
        overhead: true,
        json_out: env("R2M_BENCH_OUT").map(|d| PathBuf::from(d).join("rl_step.json")),
        prompts: 0,
        group: 0,
        new_tokens: 0,
        warmup: 1,
        reps: 0,
        dtype: "f32".into(),
        checkpointing: false,
        args: args.clone(),
        rss_child: None,
        work_dir: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => o.device_name = val()?,
            "--quick" => o.quick = true,
            "--model" => o.model = Some(val()?.into()),
            "--f32-dir" => o.f32_dir = Some(val()?.into()),
            "--rm" => o.rm_dir = Some(val()?.into()),
            "--random-weights" => o.random_weights = true,
            "--tokenizer-dir" => o.tokenizer_dir = Some(val()?.into()),
            "--python" => o.python = Some(val()?),
            "--peer-script" => o.peer_script = Some(val()?.into()),
            "--no-peer" => o.peer = false,
            "--no-install" => o.install = false,
            "--only" => {
                let v = val()?;
                let has = |w: &str| v.split(',').any(|x| x.trim() == w);
                (o.grpo, o.rloo, o.overhead) = (has("grpo"), has("rloo"), has("r2m"));
                ensure!(o.grpo || o.rloo || o.overhead, "--only takes a list of grpo, rloo, r2m");
            }
            "--json-out" => o.json_out = Some(val()?.into()),
            "--prompts" => o.prompts = val()?.parse()?,
            "--group" => o.group = val()?.parse()?,
            "--new-tokens" => o.new_tokens = val()?.parse()?,
            "--warmup" => o.warmup = val()?.parse()?,
            "--reps" => o.reps = val()?.parse()?,
            "--dtype" => {
                o.dtype = val()?;
                ensure!(o.dtype == "f32" || o.dtype == "bf16", "--dtype {}: f32 or bf16", o.dtype);
            }
            "--gradient-checkpointing" => o.checkpointing = true,
            "--rss-child" => o.rss_child = Some(val()?),
            "--work-dir" => o.work_dir = Some(val()?.into()),
            "-h" | "--help" => {
                println!("see the header of benches/rl_step.rs and docs/benchmarks.md");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown option {other}"),
            _ => {} // a cargo bench filter: ignored
        }
    }
    o.device = r2m::device::parse(&o.device_name)?;
    if o.prompts == 0 {
        o.prompts = if o.quick { 2 } else { 8 };
    }
    if o.group == 0 {
        o.group = if o.quick { 2 } else { 4 };
    }
    if o.new_tokens == 0 {
        o.new_tokens = if o.quick { 8 } else { 64 };
    }
    if o.reps == 0 {
        o.reps = if o.quick {
            1
        } else if o.device.is_cuda() {
            5
        } else {
            3
        };
    }
    ensure!(o.prompts >= 1 && o.prompts <= QUESTIONS.len(), "--prompts must be in 1..={}", QUESTIONS.len());
    ensure!(o.group >= 2, "--group must be >= 2 (GRPO and RLOO need two samples per prompt)");
    Ok(o)
}

/// What both sides read: the policy's f32 HF folder, the reward model's folder, the prompt file.
struct Prepared {
    policy_dir: PathBuf,
    rm_dir: PathBuf,
    prompts_file: PathBuf,
    work: PathBuf,
    /// Whether `work` is this process's to remove.
    own_work: bool,
    source: String,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.own_work {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

fn prepare(o: &Opts) -> Result<Prepared> {
    let gguf = o.model.clone().unwrap_or_else(r2m::paths::smollm2_gguf);
    let (policy_dir, source) = if o.random_weights {
        let dir = o.f32_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("r2m-bench-smollm2-random-f32"));
        common::write_random_smollm2(&dir, o.tokenizer_dir.as_deref())?;
        (dir, "random weights of SmolLM2-135M's shape (seed 0), SmolLM2's tokenizer".to_string())
    } else if gguf.is_dir() {
        (gguf.clone(), gguf.display().to_string())
    } else {
        let dir = o.f32_dir.clone().unwrap_or_else(common::default_f32_dir);
        export_f32(&gguf, &dir)?;
        let name = gguf.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        (dir.clone(), format!("{name}, as the f32 HF folder {}", dir.display()))
    };
    let rm_dir = o.rm_dir.clone().unwrap_or_else(|| {
        if o.random_weights {
            std::env::temp_dir().join("r2m-bench-smollm2-random-rm")
        } else {
            r2m::paths::r2m_home().join("models/smollm2-135m-bench-rm")
        }
    });
    if !rm_dir.join("model.safetensors").exists() {
        eprintln!("r2m: writing the bench's reward model (the policy's backbone + a seeded N(0, 0.02) head) to {}", rm_dir.display());
        let rm = RewardModel::load(&policy_dir.display().to_string(), 0, Device::Cpu)?;
        let tmp = rm_dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        rm.save(&tmp)?;
        let _ = std::fs::remove_dir_all(&rm_dir);
        std::fs::rename(&tmp, &rm_dir)?;
    }
    let (work, own_work) = match &o.work_dir {
        Some(w) => (w.clone(), false),
        None => {
            let w = std::env::temp_dir().join(format!("r2m-bench-rl-{}", std::process::id()));
            std::fs::create_dir_all(&w)?;
            (w, true)
        }
    };
    // TRL's conversational prompt-only format, read by r2m's loader and by the peer.
    let prompts_file = work.join("prompts.jsonl");
    if own_work {
        let lines: Vec<String> =
            QUESTIONS[..o.prompts].iter().map(|q| json!({"prompt": [{"role": "user", "content": q}]}).to_string()).collect();
        std::fs::write(&prompts_file, lines.join("\n") + "\n")?;
    }
    Ok(Prepared { policy_dir, rm_dir, prompts_file, work, own_work, source })
}

/// The workload as an r2m config; the peer gets its values from the same config.
fn rl_config(o: &Opts, p: &Prepared, algo: Algo, r2m: Option<R2mConfig>) -> RlConfig {
    let mut c = RlConfig::default();
    c.seed = 0;
    c.out = p.work.join("run");
    c.device = o.device_name.clone();
    c.policy.model = p.policy_dir.display().to_string();
    c.policy.trainable = Trainable::Top { layers: 4, head: false };
    c.policy.chat = true;
    c.reward.kind = RewardKind::Rm;
    c.reward.model = p.rm_dir.display().to_string();
    c.reward.gold_metrics = false;
    c.policy.dtype = o.dtype.clone();
    c.reward.dtype = o.dtype.clone();
    c.policy.gradient_checkpointing = o.checkpointing;
    let b = o.prompts * o.group;
    c.reward.batch_size = b; // one RM batch, as TRL scores the whole generation batch at once
    c.data.prompts = p.prompts_file.display().to_string();
    c.rl.algo = algo;
    c.rl.prompts_per_step = o.prompts;
    c.rl.group_size = o.group;
    c.rl.temperature = 0.7;
    c.rl.top_p = None;
    c.rl.max_new_tokens = o.new_tokens;
    c.rl.ignore_eos = true;
    c.rl.epochs = 2;
    c.rl.minibatch = if b.is_multiple_of(2) { b / 2 } else { b };
    c.rl.grad_accum = r2m::rl::budget::Count::Fixed(1);
    c.rl.beta = Some(match algo {
        Algo::Grpo => 0.04,
        _ => 0.05,
    });
    c.rl.eval_every = 0;
    c.rl.save_every = 0;
    c.r2m = r2m;
    c
}

fn build_run(cfg: &RlConfig, dev: Device) -> Result<Run<'_>> {
    r2m::sources::build_run(cfg, dev)
}

fn trainable_weights(run: &Run) -> i64 {
    run.opt.params.iter().map(|(_, t)| t.numel() as i64).sum()
}

fn algo_name(a: Algo) -> &'static str {
    match a {
        Algo::Grpo => "grpo",
        Algo::Rloo => "rloo",
        Algo::ReinforcePp => "reinforce_pp",
        Algo::Remax => "remax",
    }
}

/// Makes sure the peer's Python has TRL: installs `trl==TRL_VERSION` (with the venv's transformers
/// and torch pinned) unless `--no-install`; returns the version found.
fn ensure_trl(o: &Opts, python: &str) -> Result<String> {
    let probe = || -> Option<String> {
        let out = Command::new(python).args(["-c", "import trl; print(trl.__version__)"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if let Some(v) = probe() {
        if v != TRL_VERSION {
            eprintln!("r2m: note: trl {v} is installed; this bench was written against trl {TRL_VERSION}");
        }
        return Ok(v);
    }
    let pins = [format!("trl=={TRL_VERSION}"), "transformers==4.57.1".into(), "torch==2.11.0".into()];
    let cmd = format!("{python} -m pip install {}", pins.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(" "));
    ensure!(o.install, "the peer needs TRL, which {python} lacks: run\n  {cmd}\n(or drop --no-install, or pass --no-peer)");
    eprintln!("r2m: installing TRL for the peer (bench only): {cmd}");
    let st = Command::new(python).args(["-m", "pip", "install", "-q"]).args(&pins).status()?;
    ensure!(st.success(), "installing TRL failed; run by hand:\n  {cmd}");
    probe().context("trl still cannot be imported after installing it")
}

/// TRL's trainer for one algorithm (benches/peer_rl.py): one `{"cmd": "step"}` -> one RL step.
struct TrlPeer {
    proc: JsonChild,
    hello: Value,
}

impl TrlPeer {
    fn start(o: &Opts, p: &Prepared, cfg: &RlConfig, python: &str) -> Result<TrlPeer> {
        let script = peer_script(o.peer_script.as_deref(), "peer_rl.py");
        let r = &cfg.rl;
        let Trainable::Top { layers, .. } = cfg.policy.trainable else { bail!("the bench trains a top slice") };
        eprintln!("r2m: starting the peer: {python} {} --algo {}", script.display(), algo_name(r.algo));
        let mut cmd = Command::new(python);
        cmd.arg(&script)
            .args(["--algo", algo_name(r.algo)])
            .args(["--model", &p.policy_dir.display().to_string()])
            .args(["--rm", &p.rm_dir.display().to_string()])
            .args(["--prompts", &p.prompts_file.display().to_string()])
            .args(["--threads", &tch::get_num_threads().to_string()])
            .args(["--device", &o.device_name.replace("auto", "cpu")])
            .args(["--dtype", &o.dtype])
            .args(if o.checkpointing { &["--gradient-checkpointing"][..] } else { &[] })
            .args(["--group", &r.group_size.to_string()])
            .args(["--prompts-per-step", &r.prompts_per_step.to_string()])
            .args(["--new-tokens", &r.max_new_tokens.to_string()])
            .args(["--temperature", &r.temperature.to_string()])
            .args(["--epochs", &r.epochs.to_string()])
            .args(["--minibatch", &r.minibatch.to_string()])
            .args(["--beta", &r.beta().to_string()])
            .args(["--eps", &r.eps.to_string()])
            .args(["--lr", &cfg.policy.lr.to_string()])
            .args(["--max-grad-norm", &cfg.policy.max_grad_norm.to_string()])
            .args(["--top-layers", &layers.to_string()])
            .args(["--seed", &cfg.seed.to_string()])
            .args(["--work", &p.work.join(format!("trl-{}", algo_name(r.algo))).display().to_string()]);
        let mut proc = JsonChild::spawn(cmd, &format!("the peer with {python}"))?;
        let hello = proc.read()?;
        Ok(TrlPeer { proc, hello })
    }
}

/// One algorithm, r2m against TRL.
struct Compared {
    algo: Algo,
    r2m: Vec<Rep>,
    trl: Vec<Rep>,
    other_load: f64,
    trainable: i64,
    /// The peer's hello (versions, optimizer), without the prompt ids.
    peer_info: Value,
}

/// Median of a metric over repetitions (`extra[key]`), NaN where absent.
fn med(reps: &[Rep], key: &str) -> f64 {
    let v: Vec<f64> = reps.iter().filter_map(|r| r.extra.get(key).and_then(|x| x.as_f64())).collect();
    median(&v)
}

fn secs(reps: &[Rep]) -> Vec<f64> {
    reps.iter().map(|r| r.s).collect()
}

/// r2m's phases of one step: the `time/*` metrics, plus "other" = wall - their sum.
const R2M_PHASES: [&str; 10] = [
    "time/prompts",
    "time/generate",
    "time/logprobs",
    "time/reference",
    "time/decode",
    "time/reward",
    "time/advantages",
    "time/policy",
    "time/r2m",
    "time/metrics",
];

fn r2m_step(run: &mut Run, t: &mut i64, dev: Device) -> Result<Rep> {
    let mut rep = timed(dev, || Ok(Value::Object(run.step(*t)?)))?;
    *t += 1;
    let sum: f64 = R2M_PHASES.iter().filter_map(|k| rep.extra.get(*k).and_then(|x| x.as_f64())).sum();
    if let Some(m) = rep.extra.as_object_mut() {
        m.insert("time/other".into(), json!(rep.s - sum));
    }
    Ok(rep)
}

fn compare_trl(o: &Opts, p: &Prepared, algo: Algo, python: Option<&str>, trl_version: &mut Option<String>) -> Result<Compared> {
    let cfg = rl_config(o, p, algo, None);
    let t = Instant::now();
    let mut run = build_run(&cfg, o.device)?;
    eprintln!("r2m: built the {} run in {:.1} s", algo_name(algo), t.elapsed().as_secs_f64());
    let trainable = trainable_weights(&run);
    let mut peer_info = Value::Null;
    let mut peer = match python {
        Some(py) => {
            let pr = TrlPeer::start(o, p, &cfg, py)?;
            *trl_version = pr.hello["trl"].as_str().map(String::from);
            // Same work on both sides: the same prompt tokens and the same trainable weights.
            let refs: Vec<&r2m::data::PromptExample> = run.train_prompts.iter().collect();
            let ours = r2m::rl::rollout::prompt_ids(&run.tokenizer, &refs, cfg.policy.chat, cfg.rl.max_prompt_tokens)?;
            let theirs: Vec<Vec<i64>> = serde_json::from_value(pr.hello["prompt_ids"].clone()).context("peer hello: prompt_ids")?;
            ensure!(ours == theirs, "r2m and TRL tokenize the prompts differently:\n  r2m {ours:?}\n  TRL {theirs:?}");
            let tw = pr.hello["trainable_params"].as_i64().unwrap_or(-1);
            ensure!(tw == trainable, "r2m trains {trainable} weights, TRL {tw}: not the same trainable set");
            peer_info = pr.hello.clone();
            if let Some(m) = peer_info.as_object_mut() {
                m.remove("prompt_ids");
                m.remove("ready");
            }
            Some(pr)
        }
        None => None,
    };
    let helpers: Vec<u32> = peer.as_ref().map(|pr| pr.proc.pid()).into_iter().collect();
    let has_peer = peer.is_some();
    let dev = o.device;
    let mut step_t = 0i64;
    let mut sides = vec![];
    if let Some(pr) = peer.as_mut() {
        sides.push(Side::new("TRL", |_| {
            let r = pr.proc.call(json!({"cmd": "step"}))?;
            Ok(Rep { s: r["s"].as_f64().context("peer answer without 's'")?, extra: r["phases"].clone() })
        }));
    }
    sides.push(Side::new("r2m", |_| r2m_step(&mut run, &mut step_t, dev)));
    let what = format!("{} step", algo_name(algo));
    let (mut kept, load) = interleave(&what, dev, o.warmup, o.reps, &helpers, &mut sides)?;
    drop(sides);
    let r2m_reps = kept.pop().unwrap_or_default();
    let trl_reps = if has_peer { kept.pop().unwrap_or_default() } else { vec![] };
    Ok(Compared { algo, r2m: r2m_reps, trl: trl_reps, other_load: load, trainable, peer_info })
}

/// glibc's allocator setting for the memory children (see `rss_of`).
const RSS_CHILD_TUNABLES: &str = "glibc.malloc.mmap_threshold=1048576";

/// Peak RSS of one overhead variant, measured in a child process (this binary, `--rss-child`).
fn rss_of(o: &Opts, p: &Prepared, variant: &str) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    // Peak RSS under glibc's default (dynamic) mmap threshold includes freed heap memory glibc
    // keeps, which varies by +-200 MB between two runs of the same variant (docs/benchmarks.md);
    // with a fixed 1 MiB threshold every large tensor is mapped and unmapped, so RSS follows what is
    // live. Slower, but the children only measure memory. An explicit GLIBC_TUNABLES wins.
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        cmd.env("GLIBC_TUNABLES", RSS_CHILD_TUNABLES);
    }
    let out = cmd
        .args(&o.args)
        .args(["--rss-child", variant, "--work-dir", &p.work.display().to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting the memory child")?;
    ensure!(out.status.success(), "the memory child for {variant} failed (see its messages above)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).context("the memory child printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}

fn overhead_config(o: &Opts, p: &Prepared, variant: &str) -> RlConfig {
    let r2m = (variant == "r2m").then(|| R2mConfig { method: Method::R2m, ..Default::default() });
    rl_config(o, p, Algo::Rloo, r2m)
}

/// Steps of each memory child: warmup + 2 (1 with --quick).
fn rss_steps(o: &Opts) -> usize {
    if o.quick {
        1
    } else {
        o.warmup + 2
    }
}

/// The memory child: build one variant, run `rss_steps`, print peak RSS figures as JSON.
fn rss_child(o: &Opts, variant: &str) -> Result<()> {
    ensure!(variant == "vanilla" || variant == "r2m", "--rss-child takes vanilla or r2m");
    let p = prepare(o)?;
    let cfg = overhead_config(o, &p, variant);
    let mut run = build_run(&cfg, o.device)?;
    let load_peak = peak_rss_kb();
    let reset = reset_peak_rss();
    let mut t = 0i64;
    let mut steps = vec![];
    let mut r2m_delta = vec![];
    for _ in 0..rss_steps(o) {
        let r = r2m_step(&mut run, &mut t, o.device)?;
        eprintln!("r2m:  memory child {variant}: step {t} {:.3} s, VmHWM {:.0} MB", r.s, peak_rss_kb() as f64 / 1024.0);
        steps.push(r.s);
        r2m_delta.extend(r.extra.get("r2m/peak_rss_delta_mb").and_then(|x| x.as_f64()));
    }
    let end_peak = peak_rss_kb();
    let j = json!({
        "variant": variant, "load_peak_rss_kb": load_peak, "steps_peak_rss_kb": if reset { Some(end_peak) } else { None },
        "peak_rss_kb": load_peak.max(end_peak), "step_s": steps, "r2m_update_peak_rss_delta_mb": r2m_delta,
    });
    println!("{j}");
    Ok(())
}

struct Overhead {
    vanilla: Vec<Rep>,
    r2m: Vec<Rep>,
    other_load: f64,
    rss: Option<(Value, Value)>,
}

fn bench_overhead(o: &Opts, p: &Prepared) -> Result<Overhead> {
    let (cv, cr) = (overhead_config(o, p, "vanilla"), overhead_config(o, p, "r2m"));
    let (mut tv, mut tr) = (0i64, 0i64);
    let dev = o.device;
    let (mut kept, load) = {
        let mut rv = build_run(&cv, dev)?;
        let mut rr = build_run(&cr, dev)?;
        let mut sides =
            vec![Side::new("vanilla", |_| r2m_step(&mut rv, &mut tv, dev)), Side::new("R2M", |_| r2m_step(&mut rr, &mut tr, dev))];
        interleave("rloo step, vanilla vs R2M", dev, o.warmup, o.reps, &[], &mut sides)?
    };
    let r2m_reps = kept.pop().unwrap_or_default();
    let vanilla = kept.pop().unwrap_or_default();
    // Peak memory, one child process per variant, one after the other (the runs above are dropped).
    let rss = (|| -> Result<(Value, Value)> { Ok((rss_of(o, p, "vanilla")?, rss_of(o, p, "r2m")?)) })();
    let rss = match rss {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("r2m: peak memory not measured: {e:#}");
            None
        }
    };
    Ok(Overhead { vanilla, r2m: r2m_reps, other_load: load, rss })
}

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

fn goal(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn print_trl(o: &Opts, rows: &[Compared]) {
    println!();
    let b = o.prompts * o.group;
    let minibatches = if b.is_multiple_of(2) { 2 } else { 1 };
    println!(
        "## RL step, r2m vs TRL ({} prompts x {} samples, {} new tokens, 2 epochs x {minibatches} minibatches of {})",
        o.prompts,
        o.group,
        o.new_tokens,
        b / minibatches
    );
    println!();
    println!("| algorithm | r2m s/step | TRL s/step | TRL / r2m | goal | reps | other load |");
    println!("|---|---:|---:|---:|---|---:|---:|");
    for c in rows {
        let (r, t) = (median(&secs(&c.r2m)), median(&secs(&c.trl)));
        let ratio = t / r;
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} cores |",
            algo_name(c.algo).to_uppercase(),
            f(r, 2),
            f(t, 2),
            if ratio.is_finite() { format!("{ratio:.2}x") } else { "-".into() },
            if ratio.is_finite() { format!(">= 2x: {}", goal(ratio >= 2.0)) } else { ">= 2x".into() },
            c.r2m.len(),
            c.other_load
        );
    }
    println!();
    println!("Per phase, seconds (medians; TRL's from wrapped methods, approximate):");
    println!();
    let mut head = "| phase |".to_string();
    let mut rule = "|---|".to_string();
    for c in rows {
        let a = algo_name(c.algo).to_uppercase();
        head += &format!(" r2m {a} | TRL {a} |");
        rule += "---:|---:|";
    }
    println!("{head}\n{rule}");
    type Cell = fn(&Compared) -> (f64, f64);
    let lines: [(&str, Cell); 8] = [
        ("generate (r2m: + old log-probs, trunk)", |c| (med(&c.r2m, "time/generate"), med(&c.trl, "generate"))),
        ("old log-probs (r2m: a policy forward, if any)", |c| (med(&c.r2m, "time/logprobs"), f64::NAN)),
        ("reference log-probs", |c| (med(&c.r2m, "time/reference"), f64::NAN)),
        ("old + reference log-probs", |c| {
            // r2m's old log-probs come from the generator by default (no `time/logprobs`).
            let old = med(&c.r2m, "time/logprobs");
            (if old.is_nan() { 0.0 } else { old } + med(&c.r2m, "time/reference"), med(&c.trl, "logprobs_reference"))
        }),
        ("reward (RM forward)", |c| (med(&c.r2m, "time/reward"), med(&c.trl, "reward"))),
        ("policy update (fwd + bwd + AdamW)", |c| (med(&c.r2m, "time/policy"), med(&c.trl, "update"))),
        ("other", |c| (med(&c.r2m, "time/other"), med(&c.trl, "other"))),
        ("step", |c| (median(&secs(&c.r2m)), median(&secs(&c.trl)))),
    ];
    for (name, cell) in lines {
        let mut l = format!("| {name} |");
        for c in rows {
            let (a, b) = cell(c);
            l += &format!(" {} | {} |", f(a, 2), f(b, 2));
        }
        println!("{l}");
    }
}

fn print_overhead(o: &Opts, ov: &Overhead) {
    println!();
    println!("## R2M overhead (RLOO, R2M defaults d 2048 / 1 head vs vanilla, the same RM)");
    println!();
    let (v, r) = (median(&secs(&ov.vanilla)), median(&secs(&ov.r2m)));
    let tr = r / v;
    println!("| | vanilla | R2M | R2M / vanilla | goal |");
    println!("|---|---:|---:|---:|---|");
    println!("| step, s | {} | {} | {} | <= 1.03: {} |", f(v, 2), f(r, 2), f(tr, 3), goal(tr <= 1.03));
    for (name, key) in [
        ("generate, s", "time/generate"),
        ("old log-probs + h, s", "time/logprobs"),
        ("reference, s", "time/reference"),
        ("reward, s", "time/reward"),
        ("policy update, s", "time/policy"),
        ("R2M update, s", "time/r2m"),
        ("other, s", "time/other"),
    ] {
        let (a, b) = (med(&ov.vanilla, key), med(&ov.r2m, key));
        let ratio = if a >= 1e-3 { f(b / a, 3) } else { "-".into() };
        println!("| {name} | {} | {} | {ratio} | |", f(a, 3), f(b, 3));
    }
    if let Some((vm, rm)) = &ov.rss {
        let mb = |j: &Value, k: &str| j.get(k).and_then(|x| x.as_f64()).map(|x| x / 1024.0).unwrap_or(f64::NAN);
        for (name, key, is_goal) in
            [("peak RSS during the steps, MB", "steps_peak_rss_kb", true), ("peak RSS, whole process, MB", "peak_rss_kb", false)]
        {
            let (a, b) = (mb(vm, key), mb(rm, key));
            let g = if is_goal && (b / a).is_finite() { format!("<= 1.03: {}", goal(b / a <= 1.03)) } else { String::new() };
            println!("| {name} | {} | {} | {} | {g} |", f(a, 0), f(b, 0), f(b / a, 3));
        }
    } else {
        println!("| peak RSS | - | - | - | not measured |");
    }
    println!();
    println!(
        "reps {}, other load {:.2} cores; memory: each variant in its own process ({} step(s), GLIBC_TUNABLES={}).",
        ov.r2m.len(),
        ov.other_load,
        rss_steps(o),
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| RSS_CHILD_TUNABLES.into())
    );
}

fn reps_json(reps: &[Rep]) -> Value {
    Value::Array(reps.iter().map(|r| json!({"s": r.s, "extra": r.extra})).collect())
}

fn main() -> Result<()> {
    // As r2m's executable does (src/main.rs).
    r2m::malloc::keep_freed_memory();
    let o = parse_opts()?;
    if let Some(v) = o.rss_child.clone() {
        return rss_child(&o, &v);
    }
    let t_all = Instant::now();
    let dev_desc = device_description(o.device, &o.device_name);
    eprintln!("r2m: rl_step bench on {dev_desc}{}", if o.quick { " [quick]" } else { "" });
    let p = prepare(&o)?;
    let python = (o.peer && (o.grpo || o.rloo)).then(|| peer_python(o.python.as_deref()));
    let mut trl_version = match &python {
        Some(py) => Some(ensure_trl(&o, py)?),
        None => None,
    };
    let mut rows = vec![];
    for (on, algo) in [(o.grpo, Algo::Grpo), (o.rloo, Algo::Rloo)] {
        if on {
            rows.push(compare_trl(&o, &p, algo, python.as_deref(), &mut trl_version)?);
        }
    }
    let overhead = if o.overhead { Some(bench_overhead(&o, &p)?) } else { None };

    println!();
    let precision = if o.dtype == "bf16" { "bf16 autocast (f32 weights)" } else { "f32" };
    let ckpt = if o.checkpointing { ", activation checkpointing on both sides" } else { "" };
    println!("rl_step bench: SmolLM2-135M-Instruct {precision}{ckpt}, {dev_desc}, commit {}", git_commit());
    println!("policy: {}; reward model: {}", p.source, p.rm_dir.display());
    if let Some(c) = rows.iter().find(|c| !c.peer_info.is_null()) {
        let h = |k: &str| match &c.peer_info[k] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        println!(
            "peer: TRL {} (GRPOTrainer / RLOOTrainer), transformers {}, torch {}, {} threads, optimizer {}",
            h("trl"),
            h("transformers"),
            h("torch"),
            h("threads"),
            h("optim")
        );
    }
    if let Some(c) = rows.first() {
        println!("trainable: top 4 blocks + final norm, {} weights on both sides; prompt tokens identical on both sides", c.trainable);
    }
    if !rows.is_empty() {
        print_trl(&o, &rows);
    }
    if let Some(ov) = &overhead {
        print_overhead(&o, ov);
    }
    println!("\nmedians of the timed steps after {} warmup step(s); other load: the most cores that other processes", o.warmup);
    println!("kept busy during any one kept round. Total wall time {:.0} s.", t_all.elapsed().as_secs_f64());

    if let Some(path) = &o.json_out {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let trl_rows: Vec<Value> = rows
            .iter()
            .map(|c| {
                json!({"algo": algo_name(c.algo), "r2m_s": median(&secs(&c.r2m)), "trl_s": median(&secs(&c.trl)),
                       "r2m_reps": reps_json(&c.r2m), "trl_reps": reps_json(&c.trl), "trainable_weights": c.trainable, "peer": c.peer_info,
                       "max_other_load_cores": c.other_load})
            })
            .collect();
        let ov = overhead.as_ref().map(|ov| {
            json!({"vanilla_s": median(&secs(&ov.vanilla)), "r2m_s": median(&secs(&ov.r2m)), "vanilla_reps": reps_json(&ov.vanilla),
                   "r2m_reps": reps_json(&ov.r2m), "memory": ov.rss.as_ref().map(|(a, b)| json!({"vanilla": a, "r2m": b})),
                   "max_other_load_cores": ov.other_load})
        });
        let mut workload = Map::new();
        workload.insert("prompts".into(), json!(o.prompts));
        workload.insert("group".into(), json!(o.group));
        workload.insert("new_tokens".into(), json!(o.new_tokens));
        workload.insert("warmup".into(), json!(o.warmup));
        workload.insert("reps".into(), json!(o.reps));
        let j = json!({
            "device": dev_desc, "threads": tch::get_num_threads(), "commit": git_commit(), "quick": o.quick,
            "model": p.source, "trl": trl_version, "workload": workload, "rl_vs_trl": trl_rows, "r2m_overhead": ov,
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
        eprintln!("r2m: wrote {}", path.display());
    }
    Ok(())
}
