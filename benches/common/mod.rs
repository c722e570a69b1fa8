//! Helpers shared by the peer benchmarks (benches/foundation.rs, benches/rl_step.rs): the f32 HF
//! folder both sides load, a peer child process driven by JSON lines, repetitions of several sides
//! interleaved with other-load detection, medians, and the machine's description.
#![allow(dead_code)] // each bench uses a subset

pub mod roofline;

use anyhow::{bail, ensure, Context, Result};
use r2m::model::causal_lm::CausalLm;
use r2m::model::export::{export_hf, write_json};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;
use tch::Device;

/// Chat questions the benches turn into prompts (through the model's chat template).
pub const QUESTIONS: [&str; 32] = [
    "What is the capital of France?",
    "Explain photosynthesis in simple terms.",
    "Write a haiku about the sea.",
    "How do I reverse a list in Python?",
    "What causes the seasons on Earth?",
    "Give me three tips for better sleep.",
    "Who wrote Pride and Prejudice?",
    "What is the difference between a virus and a bacterium?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How does a rainbow form?",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
    "Why is the sky blue?",
    "Suggest a name for a friendly robot.",
    "What are the main ingredients of a pancake?",
    "Describe a cat to someone who has never seen one.",
    "What is machine learning?",
    "How many continents are there, and what are they?",
    "Write a short thank-you note to a teacher.",
    "What is the boiling point of water at sea level?",
    "Explain what a prime number is.",
    "What should I pack for a weekend hiking trip?",
    "Why do leaves change colour in autumn?",
    "Tell me a fun fact about octopuses.",
    "What is the tallest mountain in the world?",
    "How do vaccines work?",
    "Give an example of a metaphor.",
    "What is the Pythagorean theorem?",
    "How can I make my code easier to read?",
    "What does a bee do in a hive?",
    "Recommend a good habit for learning a language.",
    "What is the speed of light?",
];

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// CPU time, in clock ticks: busy time of the whole machine, and of this process + its helpers.
pub struct CpuSnap {
    busy: u64,
    ours: u64,
    at: Instant,
}

fn proc_ticks(pid: &str) -> u64 {
    // Fields after the command (which may hold spaces): state is field 3; utime, stime 14, 15.
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0)
}

/// A snapshot of the machine's busy time and of this process + `helpers` (peer processes).
pub fn cpu_snap(helpers: &[u32]) -> CpuSnap {
    let busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal
            Some(v.iter().take(8).sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0))
        })
        .unwrap_or(0);
    let ours = proc_ticks("self") + helpers.iter().map(|p| proc_ticks(&p.to_string())).sum::<u64>();
    CpuSnap { busy, ours, at: Instant::now() }
}

/// Cores kept busy by other processes between two snapshots (100 ticks a second on Linux).
pub fn other_load(a: &CpuSnap, b: &CpuSnap) -> f64 {
    let secs = (b.at - a.at).as_secs_f64().max(1e-3);
    let other = (b.busy.saturating_sub(a.busy)) as f64 - (b.ours.saturating_sub(a.ours)) as f64;
    (other / 100.0 / secs).max(0.0)
}

pub fn git_commit() -> String {
    if let Some(c) = std::env::var("R2M_BENCH_COMMIT").ok().filter(|c| !c.is_empty()) {
        return c;
    }
    let dirty = Command::new("git")
        .args(["-C", &manifest_dir().display().to_string(), "status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Command::new("git")
        .args(["-C", &manifest_dir().display().to_string(), "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string() + if dirty { " (+ uncommitted changes)" } else { "" })
        .unwrap_or_else(|| "uncommitted".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// "cpu, N threads, <model> (M logical CPUs)" or "<device> (CUDA)".
pub fn device_description(dev: Device, device_name: &str) -> String {
    match dev {
        Device::Cuda(_) => format!("{device_name} (CUDA)"),
        _ => format!("cpu, {} threads, {} ({} logical CPUs)", tch::get_num_threads(), cpu_model(), num_cpus()),
    }
}

/// The Python the peers run on: `given`, else the repository's .venv (scripts/bootstrap.sh), else python3.
pub fn peer_python(given: Option<&str>) -> String {
    if let Some(p) = given {
        return p.to_string();
    }
    let venv = manifest_dir().join(".venv/bin/python");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".into()
    }
}

/// A peer script: `given`, else benches/NAME next to this crate's manifest (or relative to the cwd).
pub fn peer_script(given: Option<&Path>, name: &str) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    let s = manifest_dir().join("benches").join(name);
    if s.exists() {
        s
    } else {
        PathBuf::from("benches").join(name)
    }
}

/// The f32 HF folder of SmolLM2-135M-Instruct that both sides load: `$R2M_HOME/models/smollm2-135m-instruct-f32`.
pub fn default_f32_dir() -> PathBuf {
    r2m::paths::r2m_home().join("models/smollm2-135m-instruct-f32")
}

/// SmolLM2-135M's architecture (what `--random-weights` fills with seeded random weights).
pub fn smollm2_config() -> r2m::model::DecoderConfig {
    serde_json::from_value(json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "hidden_act": "silu",
    }))
    .expect("a valid config")
}

/// Writes seeded random (seed 0) weights of SmolLM2-135M's shape as an f32 HF folder `dir`
/// (config.json + model.safetensors), once, with SmolLM2's tokenizer files copied from
/// `tokenizer_dir` (default: the f32 export's folder): for machines without the model files (a
/// GPU machine that cannot download them). Speed does not depend on the weights' values.
pub fn write_random_smollm2(dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
    let tok = tokenizer_dir.map(Path::to_path_buf).unwrap_or_else(default_f32_dir);
    std::fs::create_dir_all(dir)?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if !dir.join(f).exists() {
            let src = tok.join(f);
            ensure!(
                src.exists(),
                "--random-weights: {} not found: pass --tokenizer-dir with SmolLM2's tokenizer.json and tokenizer_config.json",
                src.display()
            );
            std::fs::copy(&src, dir.join(f))?;
        }
    }
    if dir.join("model.safetensors").exists() {
        return Ok(());
    }
    let cfg = smollm2_config();
    eprintln!("r2m: writing random SmolLM2-135M-shaped weights (seed 0) to {}", dir.display());
    let m = CausalLm::random(&cfg, 0, Device::Cpu)?;
    let mut j = serde_json::to_value(&cfg)?;
    j["torch_dtype"] = "float32".into();
    write_json(&dir.join("config.json"), &j)?;
    r2m::model::load::safetensors::write_file(&dir.join("model.safetensors"), &r2m::model::export::hf_state_dict(&m))?;
    Ok(())
}

/// Exports `gguf` to the f32 HF folder `dir`, once (nothing to do when `dir/model.safetensors`
/// exists). TRL/transformers refuse a "quantized" config for training, so `quantization_config` goes.
pub fn export_f32(gguf: &Path, dir: &Path) -> Result<()> {
    if dir.join("model.safetensors").exists() {
        return Ok(());
    }
    ensure!(gguf.exists(), "{} not found: run scripts/bootstrap.sh, or pass --model GGUF|DIR", gguf.display());
    eprintln!("r2m: exporting {} to the f32 HF folder {} (once)", gguf.display(), dir.display());
    let t = Instant::now();
    let loaded = CausalLm::load(&r2m::model::load::ModelSource::Gguf(gguf.to_path_buf()), Device::Cpu)?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    export_hf(&loaded.model, &loaded.tokenizer, &tmp)?;
    let cj = tmp.join("config.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&cj)?)?;
    if let Some(m) = j.as_object_mut() {
        m.remove("quantization_config");
    }
    write_json(&cj, &j)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    eprintln!("r2m: exported in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// A child process that answers one JSON request per stdin line with one JSON line on stdout
/// (lines that are not JSON objects are passed through to stderr). Dropping it sends
/// `{"cmd": "quit"}` and waits for it.
pub struct JsonChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl JsonChild {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Self> {
        let mut child = cmd
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(JsonChild { child, stdin, stdout })
    }

    pub fn read(&mut self) -> Result<Value> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("the peer exited (see its messages above)");
            }
            // transformers may print to stdout; answers are the JSON lines.
            if line.starts_with('{') {
                let v: Value = serde_json::from_str(&line)?;
                if let Some(e) = v.get("error") {
                    bail!("peer: {e}");
                }
                return Ok(v);
            }
            eprint!("peer (stdout): {line}");
        }
    }

    pub fn call(&mut self, req: Value) -> Result<Value> {
        writeln!(self.stdin, "{req}")?;
        self.stdin.flush()?;
        self.read()
    }

    pub fn secs(&mut self, req: Value) -> Result<f64> {
        self.call(req)?.get("s").and_then(|s| s.as_f64()).context("peer answer without 's'")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// One timed repetition: seconds, and whatever else the side reports (phases, metrics).
pub struct Rep {
    pub s: f64,
    pub extra: Value,
}

impl Rep {
    pub fn secs(s: f64) -> Rep {
        Rep { s, extra: Value::Null }
    }
}

/// Times `f` by the wall clock, synchronising `dev` before and after.
pub fn timed(dev: Device, f: impl FnOnce() -> Result<Value>) -> Result<Rep> {
    sync(dev);
    let t = Instant::now();
    let extra = f()?;
    sync(dev);
    Ok(Rep { s: t.elapsed().as_secs_f64(), extra })
}

/// One side of a comparison: a name for the log and a repetition, given its index (a seed).
pub struct Side<'a> {
    pub name: String,
    pub run: Box<dyn FnMut(usize) -> Result<Rep> + 'a>,
}

impl<'a> Side<'a> {
    pub fn new(name: &str, run: impl FnMut(usize) -> Result<Rep> + 'a) -> Side<'a> {
        Side { name: name.into(), run: Box::new(run) }
    }
}

/// The most cores other processes may keep busy during a round before it is redone: on the CPU
/// `R2M_BENCH_MAX_OTHER_LOAD` (default 0.25); no limit on a GPU.
pub fn max_other_load(dev: Device) -> f64 {
    if dev.is_cuda() {
        f64::INFINITY
    } else {
        std::env::var("R2M_BENCH_MAX_OTHER_LOAD").ok().and_then(|v| v.parse().ok()).unwrap_or(0.25)
    }
}

/// Warmup of every side, then `reps` timed rounds of one repetition per side, the order reversed
/// every other round (A, B, B, A, ...), so that load from elsewhere on a shared machine hits all
/// sides alike. Each repetition records how many cores other processes kept busy meanwhile
/// (`helpers`: peer processes whose CPU time counts as ours); a round during which that load
/// exceeded `max_other_load` is redone, up to `reps` times. Returns each side's kept repetitions
/// and the kept rounds' worst load.
pub fn interleave(
    what: &str,
    dev: Device,
    warmup: usize,
    reps: usize,
    helpers: &[u32],
    sides: &mut [Side],
) -> Result<(Vec<Vec<Rep>>, f64)> {
    let max_load = max_other_load(dev);
    let tag = |name: &str| format!("{:<5}", format!("{name}:"));
    for i in 0..warmup {
        for side in sides.iter_mut() {
            let r = (side.run)(i)?;
            eprintln!("{} {what}: warmup {}/{warmup} {:.3} s", tag(&side.name), i + 1, r.s);
        }
    }
    let mut kept: Vec<Vec<Rep>> = sides.iter().map(|_| vec![]).collect();
    let (mut worst, mut tries, mut redone, mut done) = (0.0f64, 0, 0, 0);
    while done < reps {
        tries += 1;
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if tries % 2 == 0 {
            order.reverse();
        }
        let mut round: Vec<Option<Rep>> = sides.iter().map(|_| None).collect();
        let mut load = 0.0f64;
        for &k in &order {
            let a = cpu_snap(helpers);
            let r = (sides[k].run)(warmup + tries)?;
            let l = other_load(&a, &cpu_snap(helpers));
            load = load.max(l);
            eprintln!("{} {what}: rep {}/{reps} {:.3} s (other load {l:.2} cores)", tag(&sides[k].name), done + 1, r.s);
            round[k] = Some(r);
        }
        if load > max_load && redone < reps {
            redone += 1;
            eprintln!("bench: {what}: other processes kept {load:.2} cores busy: redoing this round ({redone}/{reps})");
            continue;
        }
        worst = worst.max(load);
        for (k, r) in round.into_iter().enumerate() {
            kept[k].extend(r);
        }
        done += 1;
    }
    Ok((kept, worst))
}

/// Peak resident set size of this process so far (VmHWM), in kB; 0 where /proc is absent.
pub fn peak_rss_kb() -> i64 {
    r2m::r2m::peak_rss_kb()
}

/// Resets this process's VmHWM to its current RSS (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`);
/// false where that is not allowed.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
