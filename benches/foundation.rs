//! The foundation benchmark: r2m against its PyTorch peer on the same machine, side by side in one
//! run. Results and how to read them: docs/benchmarks.md.
//!
//!   cargo bench --bench foundation                      # full run (CPU), ~12 min on 2 cores
//!   R2M_BENCH_QUICK=1 cargo bench --bench foundation    # batch 1 & 4, 32 new tokens, train 2 x 64
//!   target/release/deps/foundation-<hash> --device cuda # the same binary on a GPU machine
//!                                                       # (scripts/gpu-bench.sh)
//!
//! Workloads (SmolLM2-135M-Instruct, f32, the same weights on both sides):
//! - generation tokens/s at batch 1 and 32, 128 new tokens, sampling at temperature 0.7, no EOS stop
//!   (r2m: `eos_ids` empty; transformers: `min_new_tokens` = `max_new_tokens`), so both sides make
//!   exactly B x 128 tokens. Wall time of the whole call, prefill included.
//! - training tokens/s: forward + token log-prob loss + backward + AdamW over all weights, batch
//!   8 x 256 tokens (peer: HF LlamaForCausalLM with labels = input_ids, torch.optim.AdamW).
//!
//! The peer (benches/peer_foundation.py --serve) is a child process with the same thread count
//! (`tch::get_num_threads`), driven over stdin/stdout: for each workload both sides warm up, then
//! their timed repetitions alternate (peer, r2m, r2m, peer, ...), so that load from elsewhere on a
//! shared machine hits both alike; each repetition also records how many cores other processes
//! kept busy meanwhile ("other load"); on the CPU a pair of repetitions during which that load
//! exceeded `R2M_BENCH_MAX_OTHER_LOAD` cores (default 0.25) is redone, up to `reps` times.
//! Reported: the median of the repetitions. Both sides load one
//! f32 HF folder, exported once from the GGUF to `$R2M_HOME/models/smollm2-135m-instruct-f32`
//! (with `--random-weights`: a seeded random model of the same shape, for machines without the
//! GGUF; speed does not depend on the weights). Before timing, the bench checks that both sides
//! give the same last-token logits.
//!
//! Options (env in brackets): --device cpu|cuda[:N] [R2M_BENCH_DEVICE], --quick [R2M_BENCH_QUICK=1],
//! --random-weights [--tokenizer-dir DIR], --model GGUF|DIR, --f32-dir DIR, --python PY [R2M_BENCH_PYTHON],
//! --peer-script PATH, --no-peer, --only gen,train, --json-out FILE [R2M_BENCH_OUT=dir],
//! --gen-batches 1,32, --new-tokens N, --train-batch B, --train-seq T, --gen-reps R1,R2,
//! --dtype f32|bf16 [R2M_BENCH_DTYPE] (bf16: autocast over f32 weights on both sides, r2m's
//! `policy.dtype = "bf16"` and `torch.autocast`), --train-reps R, --variants (also times alternative implementations of r2m's hot paths and splits
//! the training step into phases on both sides: the diagnosis in docs/benchmarks.md).
mod common;

use anyhow::{bail, ensure, Context, Result};
use common::roofline::{self, Roofline};
use common::{
    device_description, export_f32, git_commit, interleave, median, peer_python, peer_script, sync, timed, JsonChild, Rep, Side, QUESTIONS,
};
use r2m::model::causal_lm::CausalLm;
use r2m::model::generate::{generate, GenerateConfig, Sampling};
use r2m::model::precision::Precision;
use r2m::tokenizer::Message;
use r2m::train::{apply_trainable, AdamW, AdamWConfig, Trainable};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// SmolLM2-135M's shape (the GGUF's config), for `--random-weights`.
struct Opts {
    device: Device,
    device_name: String,
    quick: bool,
    random_weights: bool,
    model: Option<PathBuf>,
    f32_dir: Option<PathBuf>,
    /// SmolLM2's tokenizer files for `--random-weights` (default: the f32 export's folder).
    tokenizer_dir: Option<PathBuf>,
    python: Option<String>,
    peer_script: Option<PathBuf>,
    peer: bool,
    gen: bool,
    train: bool,
    json_out: Option<PathBuf>,
    gen_batches: Vec<i64>,
    new_tokens: i64,
    train_batch: i64,
    train_seq: i64,
    gen_warmup: usize,
    gen_reps: Vec<usize>,
    train_warmup: usize,
    train_reps: usize,
    variants: bool,
    /// f32, or bf16 autocast on both sides (r2m: `model::precision`; the peer: torch.autocast).
    dtype: Precision,
    /// Measure the machine's limit first (CPU; `--no-roofline` skips it).
    roofline: bool,
    /// Profile r2m's decode step at each generation batch (`--profile`).
    profile: bool,
}

fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',').map(|x| x.trim().parse::<T>().map_err(|_| anyhow::anyhow!("{what}: bad value {x:?}"))).collect()
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
        random_weights: false,
        model: None,
        f32_dir: None,
        tokenizer_dir: None,
        python: env("R2M_BENCH_PYTHON"),
        peer_script: None,
        peer: true,
        gen: true,
        train: true,
        json_out: env("R2M_BENCH_OUT").map(|d| PathBuf::from(d).join("foundation.json")),
        gen_batches: vec![],
        new_tokens: 0,
        train_batch: 0,
        train_seq: 0,
        gen_warmup: 1,
        gen_reps: vec![],
        train_warmup: 1,
        train_reps: 0,
        variants: false,
        dtype: Precision::F32,
        roofline: true,
        profile: false,
    };
    let mut dtype_name = env("R2M_BENCH_DTYPE").unwrap_or_else(|| "f32".into());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => o.device_name = val()?,
            "--quick" => o.quick = true,
            "--random-weights" => o.random_weights = true,
            "--model" => o.model = Some(val()?.into()),
            "--f32-dir" => o.f32_dir = Some(val()?.into()),
            "--tokenizer-dir" => o.tokenizer_dir = Some(val()?.into()),
            "--python" => o.python = Some(val()?),
            "--peer-script" => o.peer_script = Some(val()?.into()),
            "--no-peer" => o.peer = false,
            "--only" => {
                let v = val()?;
                o.gen = v.split(',').any(|x| x == "gen");
                o.train = v.split(',').any(|x| x == "train");
                ensure!(o.gen || o.train, "--only takes gen, train or gen,train");
            }
            "--json-out" => o.json_out = Some(val()?.into()),
            "--gen-batches" => o.gen_batches = parse_list(&val()?, "--gen-batches")?,
            "--new-tokens" => o.new_tokens = val()?.parse()?,
            "--train-batch" => o.train_batch = val()?.parse()?,
            "--train-seq" => o.train_seq = val()?.parse()?,
            "--gen-reps" => o.gen_reps = parse_list(&val()?, "--gen-reps")?,
            "--train-reps" => o.train_reps = val()?.parse()?,
            "--variants" => o.variants = true,
            "--profile" => o.profile = true,
            "--no-roofline" => o.roofline = false,
            "--dtype" => dtype_name = val()?,
            "-h" | "--help" => {
                println!("see the header of benches/foundation.rs and docs/benchmarks.md");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown option {other}"),
            _ => {} // a cargo bench filter: ignored
        }
    }
    o.device = r2m::device::parse(&o.device_name)?;
    let gpu = o.device.is_cuda();
    if o.gen_batches.is_empty() {
        o.gen_batches = if o.quick { vec![1, 4] } else { vec![1, 32] };
    }
    if o.new_tokens == 0 {
        o.new_tokens = if o.quick { 32 } else { 128 };
    }
    if o.train_batch == 0 {
        o.train_batch = if o.quick { 2 } else { 8 };
    }
    if o.train_seq == 0 {
        o.train_seq = if o.quick { 64 } else { 256 };
    }
    if o.gen_reps.is_empty() {
        o.gen_reps = if o.quick {
            vec![1]
        } else if gpu {
            vec![5]
        } else {
            vec![3]
        };
    }
    if o.train_reps == 0 {
        o.train_reps = if o.quick {
            1
        } else if gpu {
            10
        } else {
            3
        };
    }
    if gpu {
        o.gen_warmup = 2;
        o.train_warmup = 3;
    }
    o.dtype = Precision::resolve(&dtype_name, o.device, "--dtype")?;
    Ok(o)
}

/// The f32 HF folder both sides load, and the tokenizer's prompts (or synthetic ones).
struct Prepared {
    dir: PathBuf,
    prompts: Vec<Vec<i64>>,
    pad_id: i64,
    source: String,
}

fn prepare(o: &Opts) -> Result<Prepared> {
    if o.random_weights {
        let dir = o.f32_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("r2m-bench-smollm2-random-f32"));
        let cfg = common::smollm2_config();
        common::write_random_smollm2(&dir, o.tokenizer_dir.as_deref())?;
        // Synthetic prompts with the lengths of chat-templated questions (30-45 tokens).
        let mut state: u64 = 0x9E3779B97F4A7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let prompts = (0..32).map(|i| (0..30 + (i * 7) % 16).map(|_| (next() % cfg.vocab_size as u64) as i64).collect()).collect();
        return Ok(Prepared { dir, prompts, pad_id: 2, source: "random weights of SmolLM2-135M's shape".into() });
    }
    let gguf = o.model.clone().unwrap_or_else(r2m::paths::smollm2_gguf);
    let (dir, from) = if gguf.is_dir() {
        (gguf.clone(), format!("{}", gguf.display()))
    } else {
        let dir = o.f32_dir.clone().unwrap_or_else(common::default_f32_dir);
        ensure!(
            dir.join("model.safetensors").exists() || gguf.exists(),
            "{} not found: run scripts/bootstrap.sh, pass --model GGUF|DIR, or use --random-weights",
            gguf.display()
        );
        export_f32(&gguf, &dir)?;
        let name = gguf.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        (dir.clone(), format!("{name}, as the f32 HF folder {}", dir.display()))
    };
    let tok = r2m::tokenizer::Tokenizer::from_hf_dir(&dir)?;
    let mut prompts = vec![];
    for q in QUESTIONS {
        let text = tok.apply_chat_template(&[Message::user(q)], true)?;
        prompts.push(tok.encode(&text, true)?.into_iter().map(i64::from).collect::<Vec<_>>());
    }
    Ok(Prepared { dir, prompts, pad_id: tok.pad_id() as i64, source: from })
}

fn batch_of(prompts: &[Vec<i64>], b: i64) -> Vec<Vec<i64>> {
    (0..b as usize).map(|i| prompts[i % prompts.len()].clone()).collect()
}

/// The peer process (`peer_foundation.py --serve`): one JSON request per line, one JSON answer.
struct Peer {
    proc: JsonChild,
    hello: Value,
    prompts_file: PathBuf,
}

impl Peer {
    fn start(o: &Opts, p: &Prepared, threads: i32) -> Result<Peer> {
        let python = peer_python(o.python.as_deref());
        let script = peer_script(o.peer_script.as_deref(), "peer_foundation.py");
        let prompts_file = std::env::temp_dir().join(format!("r2m-bench-prompts-{}.json", std::process::id()));
        std::fs::write(&prompts_file, serde_json::to_string(&json!({"prompts": p.prompts, "pad_id": p.pad_id}))?)?;
        eprintln!("r2m: starting the peer: {python} {}", script.display());
        let mut cmd = Command::new(&python);
        cmd.arg(&script)
            .arg("--serve")
            .args(["--model", &p.dir.display().to_string()])
            .args(["--prompts", &prompts_file.display().to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--device", &o.device_name.replace("auto", "cpu")])
            .args(["--dtype", o.dtype.name()]);
        let proc = JsonChild::spawn(cmd, &format!("the peer with {python}"))?;
        let mut peer = Peer { proc, hello: Value::Null, prompts_file };
        peer.hello = peer.proc.read()?;
        Ok(peer)
    }

    fn call(&mut self, req: Value) -> Result<Value> {
        self.proc.call(req)
    }

    fn secs(&mut self, req: Value) -> Result<f64> {
        self.proc.secs(req)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.prompts_file);
    }
}

/// One workload's measurements.
struct Row {
    key: String,
    workload: String,
    tokens: i64,
    r2m: Vec<f64>,
    peer: Vec<f64>,
    /// Cores busy with other processes during each timed repetition (max over the repetitions).
    other_load: f64,
    goal: Option<f64>,
    /// Arithmetic of one repetition (FLOP), for the share of the GEMM roofline.
    flops: f64,
    /// Where the workload is bound by memory traffic (batch 1): the seconds that reading every
    /// weight once per decode step takes at `bytes` / bandwidth; the bytes read per repetition.
    bytes: Option<f64>,
}

impl Row {
    fn tps(&self, v: &[f64]) -> Option<f64> {
        (!v.is_empty()).then(|| self.tokens as f64 / median(v))
    }
}

/// Warmup of both sides, then `reps` timed pairs, alternating which side goes first (peer, r2m,
/// r2m, peer, ...), with other-load detection (`common::interleave`). Only r2m's side when there is
/// no peer.
fn side_by_side(
    what: &str,
    dev: Device,
    warmup: usize,
    reps: usize,
    peer: &mut Option<Peer>,
    mut r2m_run: impl FnMut(usize) -> Result<()>,
    mut peer_run: impl FnMut(&mut Peer, usize) -> Result<f64>,
) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let helpers: Vec<u32> = peer.as_ref().map(|p| p.pid()).into_iter().collect();
    let has_peer = peer.is_some();
    let mut sides = vec![];
    if let Some(p) = peer.as_mut() {
        sides.push(Side::new("peer", move |i| Ok(Rep::secs(peer_run(p, i)?))));
    }
    sides.push(Side::new("r2m", |i| timed(dev, || r2m_run(i).map(|_| Value::Null))));
    let (kept, worst) = interleave(what, dev, warmup, reps, &helpers, &mut sides)?;
    let secs = |v: &Vec<Rep>| v.iter().map(|r| r.s).collect::<Vec<f64>>();
    let (tp, tr) = if has_peer { (secs(&kept[0]), secs(&kept[1])) } else { (vec![], secs(&kept[0])) };
    Ok((tr, tp, worst))
}

fn gen_cfg(n: i64, pad_id: i64, seed: u64) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens: n,
        sampling: Sampling::Sample { temperature: 0.7, top_k: None, top_p: None },
        seed,
        eos_ids: vec![],
        pad_id,
        return_hidden: false,
        return_trunk: None,
        stop_check_every: 4,
        pack_weights: None,
        cpu_kernels: true,
    }
}

fn bench_gen(o: &Opts, model: &CausalLm, p: &Prepared, peer: &mut Option<Peer>, rows: &mut Vec<Row>) -> Result<()> {
    for (bi, &b) in o.gen_batches.iter().enumerate() {
        let prompts = batch_of(&p.prompts, b);
        let n = o.new_tokens;
        let reps = o.gen_reps[bi.min(o.gen_reps.len() - 1)];
        let (tr, tp, load) = side_by_side(
            &format!("gen b{b}"),
            o.device,
            o.gen_warmup,
            reps,
            peer,
            |i| {
                let g = generate(model, &prompts, &gen_cfg(n, p.pad_id, i as u64 + 1))?;
                ensure!(g.ids.size() == [b, n], "generated {:?}, expected [{b}, {n}]", g.ids.size());
                Ok(())
            },
            |pp, i| pp.secs(json!({"cmd": "gen", "b": b, "n": n, "seed": i + 1})),
        )?;
        let padded = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let work = roofline::gen_work(model, b, padded, n);
        rows.push(Row {
            key: format!("gen_b{b}"),
            workload: format!("generate, batch {b}, {n} new tokens"),
            tokens: b * n,
            r2m: tr,
            peer: tp,
            other_load: load,
            goal: if b >= 32 { Some(2.0) } else { None },
            flops: work.flops,
            bytes: (b == 1).then(|| work.weight_bytes_per_step * (n - 1) as f64),
        });
    }
    Ok(())
}

fn train_data(o: &Opts, vocab: i64, dev: Device) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let ids = Tensor::randint(vocab, [o.train_batch, o.train_seq], (Kind::Int64, Device::Cpu)).to_device(dev);
    let mask = ids.ones_like();
    (ids, mask)
}

fn bench_train(o: &Opts, model: &mut CausalLm, peer: &mut Option<Peer>, rows: &mut Vec<Row>) -> Result<()> {
    let (b, t) = (o.train_batch, o.train_seq);
    if let Some(pp) = peer.as_mut() {
        pp.call(json!({"cmd": "train_setup", "b": b, "t": t}))?;
    }
    let params = apply_trainable(model, &Trainable::All, 0)?;
    let mut opt = AdamW::new(params, AdamWConfig { lr: 1e-5, ..Default::default() });
    let (ids, mask) = train_data(o, model.config.vocab_size, o.device);
    let model: &CausalLm = model;
    let (tr, tp, load) = side_by_side(
        &format!("train {b}x{t}"),
        o.device,
        o.train_warmup,
        o.train_reps,
        peer,
        |_| {
            let (lp, _) = model.token_logprobs(&ids, &mask, 1.0, 1)?;
            let loss = -lp.mean(Kind::Float);
            loss.backward();
            opt.step(1e-5).unwrap();
            opt.zero_grad();
            Ok(())
        },
        |pp, _| pp.secs(json!({"cmd": "train"})),
    )?;
    if o.variants {
        if let Some(pp) = peer.as_mut() {
            let r = pp.call(json!({"cmd": "train_breakdown"}))?;
            let g = |k: &str| r.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            println!(
                "variants: peer train step {b}x{t}: forward+loss {:.2} s, backward {:.2} s, AdamW {:.3} s, zero_grad {:.3} s",
                g("forward"),
                g("backward"),
                g("adamw"),
                g("zero_grad")
            );
        }
        variants::train_breakdown(model, &mut opt, &ids, &mask, o)?;
    }
    rows.push(Row {
        key: "train".into(),
        workload: format!("train step, batch {b} x {t}, all weights, AdamW"),
        tokens: b * t,
        r2m: tr,
        peer: tp,
        other_load: load,
        goal: Some(1.0),
        flops: roofline::train_flops(model, b, t),
        bytes: None,
    });
    Ok(())
}

/// max |r2m - peer| over the last-position logits of prompt 0.
fn parity(model: &CausalLm, p: &Prepared, hello: &Value) -> Result<Option<f64>> {
    let Some(want) = hello.get("parity_logits").and_then(|v| v.as_array()) else { return Ok(None) };
    let want: Vec<f32> = want.iter().map(|x| x.as_f64().unwrap_or(f64::NAN) as f32).collect();
    let _g = tch::no_grad_guard();
    let ids = Tensor::from_slice(&p.prompts[0]).view([1, -1]);
    let logits = model.forward(&ids, &ids.ones_like())?;
    let got = logits.get(0).get(-1).to_kind(Kind::Float).to_device(Device::Cpu);
    let d = (got - Tensor::from_slice(&want)).abs().max().double_value(&[]);
    Ok(Some(d))
}

fn main() -> Result<()> {
    // As r2m's executable does (src/main.rs).
    r2m::malloc::keep_freed_memory();
    let o = parse_opts()?;
    let t_all = Instant::now();
    let threads = tch::get_num_threads();
    let dev_desc = device_description(o.device, &o.device_name);
    eprintln!("r2m: foundation bench on {dev_desc}{}", if o.quick { " [quick]" } else { "" });
    let p = prepare(&o)?;

    let mut peer = if o.peer { Some(Peer::start(&o, &p, threads)?) } else { None };

    let t = Instant::now();
    let loaded = CausalLm::load(&r2m::model::load::ModelSource::HfDir(p.dir.clone()), o.device)?;
    let mut model = loaded.model;
    model.precision = o.dtype;
    eprintln!("r2m: loaded {} in {:.1} s ({})", p.dir.display(), t.elapsed().as_secs_f64(), o.dtype.name());
    let parity_diff = match &peer {
        Some(pp) => parity(&model, &p, &pp.hello)?,
        None => None,
    };
    if let Some(d) = parity_diff {
        eprintln!("r2m: parity with transformers, max |delta logit| on prompt 0: {d:.2e}");
        // bf16: the same autocast recipe on both sides gives equal logits on the CPU (test
        // smollm2_gguf_matches_transformers); other kernels may round differently.
        let tol = if o.dtype == Precision::F32 { 1e-2 } else { 0.25 };
        ensure!(d < tol, "r2m and the peer disagree on the logits (max |delta| {d}): not the same model?");
    }

    let limit = if o.roofline && o.device == Device::Cpu {
        eprintln!("r2m: measuring this machine's limit (GEMM throughput, memory bandwidth)");
        let r = roofline::measure()?;
        eprintln!("r2m: {}", r.describe());
        Some(r)
    } else {
        None
    };

    let mut rows = vec![];
    if o.profile {
        profile::run(&o, &model, &p, limit.as_ref())?;
    }
    if o.gen {
        bench_gen(&o, &model, &p, &mut peer, &mut rows)?;
    }
    if o.variants {
        variants::run(&o, &mut model, &p)?;
    }
    if o.train {
        bench_train(&o, &mut model, &mut peer, &mut rows)?;
    }
    let hello = peer.as_ref().map(|pp| pp.hello.clone());
    drop(peer);

    // The table.
    println!();
    println!(
        "foundation bench: SmolLM2-135M {}, {dev_desc}, commit {}",
        if o.dtype == Precision::F32 { "f32" } else { "bf16 autocast (f32 weights)" },
        git_commit()
    );
    println!("model: {}", p.source);
    if let Some(h) = &hello {
        println!("peer: torch {}, transformers {}, {} threads", h["torch"], h["transformers"], h["threads"]);
    }
    if let Some(d) = parity_diff {
        println!("parity: max |r2m - transformers| last-token logits = {d:.2e}");
    }
    if let Some(l) = &limit {
        println!("machine: {}", l.describe());
    }
    println!();
    println!(
        "| workload | r2m tokens/s | peer tokens/s | r2m / peer | goal | r2m: of the limit | peer: of the limit | reps | other load |"
    );
    println!("|---|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut json_rows = vec![];
    for r in &rows {
        let (rt, pt) = (r.tps(&r.r2m), r.tps(&r.peer));
        let ratio = rt.zip(pt).map(|(a, b)| a / b);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
        let share = |times: &[f64]| -> Option<f64> {
            let (l, s) = (limit.as_ref()?, (!times.is_empty()).then(|| median(times))?);
            Some(match r.bytes {
                Some(bytes) => bytes / (l.read_gbs * 1e9) / s,
                None => r.flops / s / (l.f32_gflops * 1e9),
            })
        };
        let (sr, sp) = (share(&r.r2m), share(&r.peer));
        let pct = |x: Option<f64>| match (x, r.bytes) {
            (Some(x), Some(_)) => format!("{:.0} % (bandwidth)", 100.0 * x),
            (Some(x), None) => format!("{:.0} % (f32 GEMM)", 100.0 * x),
            (None, _) => "-".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} cores |",
            r.workload,
            f(rt),
            f(pt),
            ratio.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
            r.goal
                .map(|g| format!(">= {g:.1}x{}", ratio.map(|x| if x >= g { ": met" } else { ": MISSED" }).unwrap_or("")))
                .unwrap_or_else(|| "-".into()),
            pct(sr),
            pct(sp),
            r.r2m.len(),
            r.other_load
        );
        json_rows.push(json!({
            "key": r.key, "workload": r.workload, "tokens": r.tokens, "r2m_tokens_per_s": rt,
            "peer_tokens_per_s": pt, "ratio": ratio, "goal": r.goal, "r2m_times_s": r.r2m,
            "peer_times_s": r.peer, "max_other_load_cores": r.other_load, "flops": r.flops,
            "weight_bytes_read": r.bytes, "r2m_share_of_limit": sr, "peer_share_of_limit": sp,
        }));
    }
    println!("\nmedians of the timed repetitions (after warmup); other load: the most cores that other processes");
    println!("kept busy during any one timed repetition. Of the limit: batch 1, the time to read every weight once");
    println!("per decode step at the measured bandwidth over the time taken; otherwise the FLOP/s achieved over the");
    println!("measured f32 GEMM peak. Total wall time {:.0} s.", t_all.elapsed().as_secs_f64());
    if let Some(path) = &o.json_out {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut h = hello.unwrap_or(Value::Null);
        if let Some(m) = h.as_object_mut() {
            m.remove("parity_logits");
        }
        let j = json!({
            "device": dev_desc, "threads": threads, "commit": git_commit(), "quick": o.quick,
            "model": p.source, "parity_max_abs_logit_diff": parity_diff, "peer": h, "rows": json_rows,
            "machine": limit.as_ref().map(|l| json!({
                "cpu": l.cpu, "aten_cpu_capability": l.aten_level, "features": l.features,
                "f32_gemm_gflops": l.f32_gflops, "bf16_gemm_gflops": l.bf16_gflops, "read_gb_per_s": l.read_gbs,
            })),
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
        eprintln!("r2m: wrote {}", path.display());
    }
    Ok(())
}

/// Alternative implementations of r2m's hot paths, timed against the current ones (`--variants`),
/// to back the suggestions in docs/benchmarks.md. Nothing here is used by the main table.
mod variants {
    use super::*;
    use r2m::model::attention::Masks;
    use r2m::model::decoder::{causal_mask, positions_from_mask, AttnMask};
    use r2m::model::kv_cache::KvCache;

    /// A decode-step body with fewer ops than r2m's `Decoder::forward`: q/k/v and gate/up fused into
    /// one matmul each, `at::rms_norm`, RoPE from a precomputed cos/sin table applied once to q and
    /// k together, GQA through SDPA as r2m does.
    pub struct Fused {
        embed: Tensor,
        qkv: Vec<Tensor>,
        o: Vec<Tensor>,
        gate_up: Vec<Tensor>,
        down: Vec<Tensor>,
        ln1: Vec<Tensor>,
        ln2: Vec<Tensor>,
        norm: Tensor,
        cos: Tensor, // (max_pos, hd)
        sin: Tensor,
        nh: i64,
        nkv: i64,
        hd: i64,
        d: i64,
        f: i64,
        eps: f64,
    }

    impl Fused {
        pub fn new(m: &CausalLm) -> Self {
            let _g = tch::no_grad_guard();
            let c = &m.config;
            let l = &m.model.layers;
            let w = |t: &Tensor| t.detach();
            let hd = c.head_dim();
            let dev = m.device;
            let inv = (Tensor::arange_start_step(0, hd, 2, (Kind::Int64, dev)).to_kind(Kind::Float) / hd as f64)
                .g_mul_scalar(c.layout.rope.theta.ln())
                .exp()
                .reciprocal();
            let pos = Tensor::arange(c.max_position_embeddings, (Kind::Float, dev));
            let freqs = pos.unsqueeze(1) * inv.unsqueeze(0);
            let emb = Tensor::cat(&[&freqs, &freqs], 1);
            Fused {
                embed: w(&m.model.embed_tokens),
                qkv: l
                    .iter()
                    .map(|b| Tensor::cat(&[w(&b.linears()[0].weight), w(&b.linears()[1].weight), w(&b.linears()[2].weight)], 0))
                    .collect(),
                o: l.iter().map(|b| w(&b.linears()[3].weight)).collect(),
                gate_up: l.iter().map(|b| Tensor::cat(&[w(&b.linears()[4].weight), w(&b.linears()[5].weight)], 0)).collect(),
                down: l.iter().map(|b| w(&b.linears()[6].weight)).collect(),
                ln1: l.iter().map(|b| w(&b.input_layernorm.as_ref().unwrap().weight)).collect(),
                ln2: l.iter().map(|b| w(&b.post_attention_layernorm.as_ref().unwrap().weight)).collect(),
                norm: w(&m.model.norm.weight),
                cos: emb.cos(),
                sin: emb.sin(),
                nh: c.num_attention_heads,
                nkv: c.n_kv_heads(),
                hd,
                d: c.hidden_size,
                f: c.intermediate_size,
                eps: c.norm_eps(),
            }
        }

        /// ids (B, T), positions (B, T), mask (B, 1, T, S): the final normed hidden states (B, T, D).
        pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &Tensor, cache: &mut KvCache) -> Tensor {
            let (b, t) = ids.size2().unwrap();
            let (nh, nkv, hd, d, f) = (self.nh, self.nkv, self.hd, self.d, self.f);
            let pflat = positions.reshape([-1]);
            let cos = self.cos.index_select(0, &pflat).view([b, t, 1, hd]);
            let sin = self.sin.index_select(0, &pflat).view([b, t, 1, hd]);
            let start = cache.len;
            let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
            for i in 0..self.qkv.len() {
                let h = x.rms_norm([d], Some(&self.ln1[i]), self.eps);
                let qkv = h.linear::<Tensor>(&self.qkv[i], None).view([b, t, nh + 2 * nkv, hd]);
                // RoPE on q and k at once: (B, T, nh + nkv, hd).
                let qk = qkv.narrow(2, 0, nh + nkv);
                let half = hd / 2;
                let rot = Tensor::cat(&[-qk.narrow(3, half, half), qk.narrow(3, 0, half)], 3);
                let qk = &qk * &cos + rot * &sin;
                let q = qk.narrow(2, 0, nh).transpose(1, 2);
                let k = qk.narrow(2, nh, nkv).transpose(1, 2);
                let v = qkv.narrow(2, nh + nkv, nkv).transpose(1, 2);
                let lc = &mut cache.layers[i];
                let (k, v) = lc.append(start, &k, &v);
                let y = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, true);
                let y = y.transpose(1, 2).reshape([b, t, nh * hd]).linear::<Tensor>(&self.o[i], None);
                x = x + y;
                let h = x.rms_norm([d], Some(&self.ln2[i]), self.eps);
                let gu = h.linear::<Tensor>(&self.gate_up[i], None);
                let y = (gu.narrow(2, 0, f).silu() * gu.narrow(2, f, f)).linear::<Tensor>(&self.down[i], None);
                x = x + y;
            }
            cache.len = start + t;
            x.rms_norm([d], Some(&self.norm), self.eps)
        }
    }

    fn new_cache(m: &CausalLm, b: i64, s: i64) -> KvCache {
        let c = &m.config;
        KvCache::new(c.num_hidden_layers, b, c.n_kv_heads(), s, c.head_dim(), Kind::Float, m.device)
    }

    /// Times `steps` decode steps of r2m's body and of `Fused` (alternating, `rounds` times) after
    /// one prefill of `prompts`; prints per-step medians and the max |difference| of the outputs.
    fn decode_steps(m: &CausalLm, fused: &Fused, prompts: &[Vec<i64>], steps: i64, rounds: usize, pad: i64) -> Result<()> {
        let _g = tch::no_grad_guard();
        let dev = m.device;
        let (ids, pmask) = r2m::model::generate::left_pad(prompts, pad, dev);
        let (b, p) = ids.size2()?;
        let smax = p + steps;
        let slot_valid = Tensor::ones([b, smax], (Kind::Bool, dev));
        slot_valid.narrow(1, 0, p).copy_(&pmask.to_kind(Kind::Bool));
        let pos0 = positions_from_mask(&pmask);
        let mut cache = new_cache(m, b, smax);
        let h_pre =
            m.model.forward(&ids, &pos0, &Masks { full: AttnMask::Explicit(causal_mask(&pmask)), sliding: None }, Some(&mut cache), false);
        let mut cache_f = new_cache(m, b, smax);
        let h_pre_f = fused.forward(&ids, &pos0, &causal_mask(&pmask), &mut cache_f);
        let pre_diff = (&h_pre.last - &h_pre_f).abs().max().double_value(&[]);
        let last = pmask.sum_dim_intlist([1i64].as_slice(), true, Kind::Int64) - 1;
        let tok = ids.narrow(1, p - 1, 1);
        let (mut ta, mut tb, mut tl) = (vec![], vec![], vec![]);
        let (mut th, mut ts, mut tc) = (vec![], vec![], vec![]);
        let mut step_diff: f64 = 0.0;
        for _ in 0..rounds {
            for (which, c) in [(0, &mut cache), (1, &mut cache_f)] {
                c.len = p;
                for s in 0..steps {
                    let pos = &last + (s + 1);
                    let mask = slot_valid.narrow(1, 0, p + s + 1).unsqueeze(1).unsqueeze(1);
                    sync(dev);
                    let t0 = Instant::now();
                    let h = if which == 0 {
                        m.model
                            .forward(&tok, &pos, &Masks { full: AttnMask::Explicit(mask.shallow_clone()), sliding: None }, Some(c), false)
                            .last
                    } else {
                        fused.forward(&tok, &pos, &mask, c)
                    };
                    sync(dev);
                    let dt = t0.elapsed().as_secs_f64();
                    if which == 0 {
                        ta.push(dt)
                    } else {
                        tb.push(dt)
                    }
                    // LM head, then r2m's sampling (`generate::pick`: temperature, log-softmax,
                    // entropy, inverse-CDF draw, gather), then ATen's multinomial for comparison.
                    if which == 0 {
                        let t1 = Instant::now();
                        let logits = m.logits(&h).squeeze_dim(1).to_kind(Kind::Float);
                        sync(dev);
                        let t2 = Instant::now();
                        let logp = (&logits / 0.7).log_softmax(-1, Kind::Float);
                        let probs = logp.exp();
                        let _ent = -(&probs * &logp).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
                        let tk = r2m::model::generate::draw(&probs);
                        let _lp = logp.gather(-1, &tk.unsqueeze(-1), false);
                        sync(dev);
                        let t3 = Instant::now();
                        let _tk = logp.softmax(-1, Kind::Float).multinomial(1, true);
                        sync(dev);
                        tl.push(t1.elapsed().as_secs_f64());
                        th.push((t2 - t1).as_secs_f64());
                        ts.push((t3 - t2).as_secs_f64());
                        tc.push(t3.elapsed().as_secs_f64());
                    }
                }
            }
            // Output check: the same last step from both caches.
            let s = steps - 1;
            let pos = &last + (s + 1);
            let mask = slot_valid.narrow(1, 0, p + s + 1).unsqueeze(1).unsqueeze(1);
            cache.len = p + s;
            cache_f.len = p + s;
            let ha = m
                .model
                .forward(&tok, &pos, &Masks { full: AttnMask::Explicit(mask.shallow_clone()), sliding: None }, Some(&mut cache), false)
                .last;
            let hb = fused.forward(&tok, &pos, &mask, &mut cache_f);
            step_diff = step_diff.max((ha - hb).abs().max().double_value(&[]));
        }
        let ms = |v: &[f64]| median(v) * 1e3;
        println!(
            "variants: decode step, batch {b}: r2m body {:.2} ms, fused body {:.2} ms ({:.2}x); LM head + sampling {:.2} ms \
             (head {:.2} ms, r2m's sampling {:.2} ms; a softmax + multinomial draw instead {:.2} ms); max |diff| prefill {pre_diff:.1e}, decode {step_diff:.1e}",
            ms(&ta),
            ms(&tb),
            median(&ta) / median(&tb),
            ms(&tl),
            ms(&th),
            ms(&ts),
            ms(&tc)
        );
        Ok(())
    }

    /// Median seconds of whole `generate` calls under two configs (a switch on and off),
    /// alternating, after one call each: (on, off).
    fn on_off(m: &CausalLm, prompts: &[Vec<i64>], reps: usize, cfg: impl Fn(bool, u64) -> GenerateConfig) -> Result<(f64, f64)> {
        let (mut on, mut off) = (vec![], vec![]);
        for i in 0..=reps {
            for (switch, times) in [(true, &mut on), (false, &mut off)] {
                let t = Instant::now();
                generate(m, prompts, &cfg(switch, i as u64 + 1))?;
                sync(m.device);
                if i > 0 {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
        }
        Ok((median(&on), median(&off)))
    }

    /// Whole `generate` calls with MKL-packed weights forced on and off (`GenerateConfig::pack_weights`;
    /// the default packs from batch `packed::MIN_BATCH` up), packing time included; then with r2m's
    /// CPU kernels on and off (`GenerateConfig::cpu_kernels`: sampling, and batch 1's
    /// matrix-vector products where preferred; off = ATen's ops).
    fn packing_and_kernels(m: &CausalLm, prompts: &[Vec<i64>], n: i64, pad_id: i64, reps: usize) -> Result<()> {
        let (on, off) = on_off(m, prompts, reps, |pack, seed| GenerateConfig { pack_weights: Some(pack), ..gen_cfg(n, pad_id, seed) })?;
        let b = prompts.len();
        println!("variants: generate, batch {b}, {n} new tokens: packed weights {on:.2} s, plain {off:.2} s ({:.2}x)", off / on);
        let (on, off) = on_off(m, prompts, reps, |k, seed| GenerateConfig { cpu_kernels: k, ..gen_cfg(n, pad_id, seed) })?;
        println!(
            "variants: generate, batch {b}, {n} new tokens: r2m's CPU kernels ({}) {on:.2} s, ATen's ops {off:.2} s ({:.2}x)",
            r2m::ffi::decode_kernels(),
            off / on
        );
        Ok(())
    }

    /// r2m's AdamW step (libtorch's fused kernel) against the same update as tensor ops with 2
    /// temporaries per parameter (as torch's single-tensor AdamW): v.lerp_(g*g, 1-b2); denom =
    /// sqrt(v) scaled in place.
    fn adamw(m: &mut CausalLm, o: &Opts, reps: usize) -> Result<()> {
        let params = apply_trainable(m, &Trainable::All, 0)?;
        // Gradients from one real step.
        let (ids, mask) = train_data(o, m.config.vocab_size, m.device);
        let (lp, _) = m.token_logprobs(&ids, &mask, 1.0, 1)?;
        (-lp.mean(Kind::Float)).backward();
        let mut opt = AdamW::new(
            params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
            AdamWConfig { lr: 1e-5, ..Default::default() },
        );
        let cfg = opt.cfg.clone();
        let mut m1: Vec<Tensor> = params.iter().map(|(_, t)| t.zeros_like().detach()).collect();
        let mut v1: Vec<Tensor> = params.iter().map(|(_, t)| t.zeros_like().detach()).collect();
        let lr = 1e-12; // timing only: keep the weights as they are
        let mut step = 0;
        let mut lean = || {
            let _g = tch::no_grad_guard();
            step += 1;
            let bc1 = 1.0 - cfg.beta1.powi(step);
            let bc2 = 1.0 - cfg.beta2.powi(step);
            for (i, (_, p)) in params.iter().enumerate() {
                let g = p.grad();
                let _ = m1[i].lerp_(&g, 1.0 - cfg.beta1);
                let _ = v1[i].lerp_(&g.square(), 1.0 - cfg.beta2);
                let mut denom = v1[i].sqrt();
                let _ = denom.g_div_scalar_(bc2.sqrt());
                let _ = denom.g_add_scalar_(cfg.eps);
                let _ = denom.g_mul_scalar_(-bc1 / lr);
                let mut p = p.shallow_clone();
                let _ = p.addcdiv_(&m1[i], &denom);
            }
        };
        let (mut ta, mut tb) = (vec![], vec![]);
        for _ in 0..reps {
            sync(m.device);
            let t = Instant::now();
            opt.step(lr).unwrap();
            sync(m.device);
            ta.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            lean();
            sync(m.device);
            tb.push(t.elapsed().as_secs_f64());
        }
        let n: i64 = params.iter().map(|(_, t)| t.numel() as i64).sum();
        println!(
            "variants: AdamW step over {} tensors ({n} weights): r2m (fused kernel) {:.1} ms, tensor-op variant {:.1} ms ({:.2}x)",
            params.len(),
            median(&ta) * 1e3,
            median(&tb) * 1e3,
            median(&ta) / median(&tb)
        );
        opt.zero_grad();
        m.params.freeze();
        Ok(())
    }

    /// One training step split into forward (+ loss), backward, AdamW, zero_grad, with syncs.
    pub fn train_breakdown(m: &CausalLm, opt: &mut AdamW, ids: &Tensor, mask: &Tensor, o: &Opts) -> Result<()> {
        let dev = m.device;
        let t0 = Instant::now();
        let (lp, _) = m.token_logprobs(ids, mask, 1.0, 1)?;
        let loss = -lp.mean(Kind::Float);
        sync(dev);
        let t1 = Instant::now();
        loss.backward();
        sync(dev);
        let t2 = Instant::now();
        opt.step(1e-5).unwrap();
        sync(dev);
        let t3 = Instant::now();
        opt.zero_grad();
        sync(dev);
        let t4 = Instant::now();
        let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
        println!(
            "variants: r2m train step {}x{}: forward+loss {:.2} s, backward {:.2} s, AdamW {:.3} s, zero_grad {:.3} s",
            o.train_batch,
            o.train_seq,
            s(t0, t1),
            s(t1, t2),
            s(t2, t3),
            s(t3, t4)
        );
        Ok(())
    }

    pub fn run(o: &Opts, model: &mut CausalLm, p: &Prepared) -> Result<()> {
        let fused = Fused::new(model);
        let steps = o.new_tokens.min(32);
        for &b in &o.gen_batches {
            decode_steps(model, &fused, &batch_of(&p.prompts, b), steps, 2, p.pad_id)?;
            packing_and_kernels(model, &batch_of(&p.prompts, b), o.new_tokens, p.pad_id, 2)?;
        }
        drop(fused);
        adamw(model, o, 3)?;
        Ok(())
    }
}

/// `--profile`: where the milliseconds of r2m's decode step go (`r2m::profile` spans in the model
/// and `generate`). A call with N new tokens minus a call with 1 (prefill and first pick only),
/// divided by the N - 1 decode steps between them.
mod profile {
    use super::*;
    use r2m::profile::{record, Profile};
    use std::collections::BTreeMap;

    /// Own time by span name, in seconds.
    fn own(p: &Profile) -> BTreeMap<&'static str, f64> {
        p.spans.iter().map(|(k, t)| (*k, t.own.as_secs_f64())).collect()
    }

    pub fn run(o: &Opts, m: &CausalLm, p: &Prepared, limit: Option<&Roofline>) -> Result<()> {
        ensure!(o.device == Device::Cpu, "--profile measures CPU runs (a GPU span would time the launch only)");
        let c = &m.config;
        let layers = &m.model.layers;
        let weights = |kinds: &[&str]| -> f64 {
            layers.iter().flat_map(|l| l.linears()).filter(|l| kinds.contains(&l.kind())).map(|l| l.weight.numel() as f64).sum()
        };
        for &b in &o.gen_batches {
            let prompts = batch_of(&p.prompts, b);
            let n = o.new_tokens.max(2);
            let steps = (n - 1) as f64;
            // Per decode step by part, for r2m's CPU kernels on (the default) and off (ATen's
            // ops), measured alternately: on, off, on, off; the faster of the two of each.
            let mut best: [Option<(f64, f64, BTreeMap<&'static str, f64>)>; 2] = [None, None];
            for round in 0..4 {
                let kernels = round % 2 == 0;
                let cfg = |n| GenerateConfig { cpu_kernels: kernels, ..gen_cfg(n, p.pad_id, 1) };
                if round < 2 {
                    generate(m, &prompts, &cfg(n))?; // warmup (and weight packing)
                }
                let (_, long) = record(|| generate(m, &prompts, &cfg(n)));
                let (_, short) = record(|| generate(m, &prompts, &cfg(1)));
                let step_s = (long.wall.as_secs_f64() - short.wall.as_secs_f64()) / steps;
                let short_own = own(&short);
                let mut parts: BTreeMap<&'static str, f64> =
                    own(&long).iter().map(|(k, v)| (*k, (v - short_own.get(k).copied().unwrap_or(0.0)) / steps)).collect();
                let marked: f64 = parts.values().sum();
                parts.insert("(outside every span)", step_s - marked);
                let slot = &mut best[usize::from(!kernels)];
                if slot.as_ref().is_none_or(|(s, _, _)| step_s < *s) {
                    *slot = Some((step_s, short.wall.as_secs_f64(), parts));
                }
            }
            let [Some((step_s, prefill_s, parts)), Some((aten_s, aten_prefill_s, aten_parts))] = best else { unreachable!() };
            let mut order: Vec<(&str, f64)> = parts.iter().map(|(k, v)| (*k, *v)).collect();
            order.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
            // Arithmetic per decode step by part (b rows, every layer).
            let padded = prompts.iter().map(Vec::len).max().unwrap_or(0) as f64;
            let ctx = padded + (n as f64 + 1.0) / 2.0; // mean keys per decode step
            let bf = b as f64;
            let flops: BTreeMap<&str, f64> = [
                ("attn: q, k, v projections", 2.0 * bf * weights(&["q_proj", "k_proj", "v_proj", "qkv_proj"])),
                ("attn: o projection", 2.0 * bf * weights(&["o_proj"])),
                ("mlp: gate and up projections", 2.0 * bf * weights(&["gate_proj", "up_proj", "gate_up_proj", "fc1"])),
                ("mlp: down projection", 2.0 * bf * weights(&["down_proj", "fc2"])),
                ("LM head", 2.0 * bf * (c.vocab_size * c.hidden_size) as f64),
                ("attn: softmax(q k^T) v", 4.0 * bf * ((c.num_attention_heads * c.head_dim() * c.num_hidden_layers) as f64) * ctx),
            ]
            .into_iter()
            .collect();
            let total_flops: f64 = flops.values().sum();
            let of_peak = |s: f64| {
                limit.map(|l| format!(" = {:.0} % of the f32 GEMM peak", 100.0 * total_flops / s / 1e9 / l.f32_gflops)).unwrap_or_default()
            };
            println!();
            println!(
                "decode step, batch {b}, {n} new tokens ({padded} prompt slots), r2m's CPU kernels ({}): {:.1} ms per step, \
                 {:.0} GFLOP/s{}; ATen's ops: {:.1} ms, {:.0} GFLOP/s{}. Prefill (and the first pick): {:.2} s / {:.2} s",
                r2m::ffi::decode_kernels(),
                step_s * 1e3,
                total_flops / step_s / 1e9,
                of_peak(step_s),
                aten_s * 1e3,
                total_flops / aten_s / 1e9,
                of_peak(aten_s),
                prefill_s,
                aten_prefill_s
            );
            println!();
            println!("| part | ms per step | share | GFLOP/s | ATen's ops: ms per step |");
            println!("|---|---:|---:|---:|---:|");
            for (k, s) in &order {
                let g = flops.get(k).map(|f| format!("{:.0}", f / s / 1e9)).unwrap_or_else(|| "-".into());
                let a = aten_parts.get(k).map(|a| format!("{:.2}", a * 1e3)).unwrap_or_else(|| "-".into());
                println!("| {k} | {:.2} | {:.1} % | {g} | {a} |", s * 1e3, 100.0 * s / step_s);
            }
        }
        Ok(())
    }
}
