//! Fuzzing r2m's readers of untrusted files on stable Rust: each [`Target`] feeds bytes to one
//! reader as a user would hand it a file (GGUF, safetensors, tokenizer.json, a chat template,
//! JSONL and Parquet preference data, TOML configs); [`mutate`] derives inputs from a seed corpus
//! of real files (bit flips, boundary integers, cut, repeated and spliced runs); [`fuzz`] runs a
//! target over the corpus and its mutants for a time budget. Every input must end in `Ok` or an
//! error: a panic or an input that runs longer than [`HANG`] is a failure, returned with the
//! input so it can become a regression test. (An abort, such as a failed huge allocation, ends the
//! process: that too is a failure of the test that runs it.)
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest one input may run.
pub const HANG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A `.gguf` model file: header, metadata, tensor table, tensors, its tokenizer.
    Gguf,
    /// A `.safetensors` weights file.
    Safetensors,
    /// An HF `tokenizer.json` (loaded, then encoding and decoding a fixed text).
    TokenizerJson,
    /// A chat template (`chat_template.jinja`), rendered for a two-message conversation.
    ChatTemplate,
    /// A JSONL preference file.
    Jsonl,
    /// A Parquet preference file.
    Parquet,
    /// An `rl` config (TOML).
    Toml,
}

impl Target {
    pub fn all() -> [Target; 7] {
        [Target::Gguf, Target::Safetensors, Target::TokenizerJson, Target::ChatTemplate, Target::Jsonl, Target::Parquet, Target::Toml]
    }

    /// The file name the input is written under.
    fn file(self) -> &'static str {
        match self {
            Target::Gguf => "model.gguf",
            Target::Safetensors => "model.safetensors",
            Target::TokenizerJson => "tokenizer.json",
            Target::ChatTemplate => "chat_template.jinja",
            Target::Jsonl => "pairs.jsonl",
            Target::Parquet => "pairs.parquet",
            Target::Toml => "rl.toml",
        }
    }

    /// Feeds `input` to the reader: writes it into `dir` (which holds the target's fixed
    /// companions, e.g. a valid tokenizer.json beside a chat template) and reads it.
    pub fn run(self, input: &[u8], dir: &Path) -> Result<()> {
        let path = dir.join(self.file());
        std::fs::write(&path, input).map_err(|e| crate::error::Error::io(&path, e))?;
        match self {
            Target::Gguf => {
                let _ = crate::model::load::gguf::read_tokenizer(&path);
                crate::model::load::gguf::load(&path).map(|_| ())
            }
            Target::Safetensors => crate::model::load::safetensors::read_file(&path).map(|_| ()),
            Target::TokenizerJson | Target::ChatTemplate => {
                let tok = crate::tokenizer::Tokenizer::from_hf_dir(dir)?;
                if self == Target::TokenizerJson {
                    let ids = tok.encode("Hello, world! 123 é", true)?;
                    tok.decode(&ids, false)?;
                }
                let msgs = [
                    crate::tokenizer::Message { role: "user".into(), content: "Hi".into() },
                    crate::tokenizer::Message { role: "assistant".into(), content: "Hello.".into() },
                ];
                tok.apply_chat_template(&msgs, true).map(|_| ())
            }
            Target::Jsonl | Target::Parquet => {
                let opts = crate::data::LoadOptions { skip_invalid: true };
                crate::data::load_preferences(&path, &opts).map(|_| ())
            }
            Target::Toml => crate::config::load::<crate::rl::config::RlConfig>(Some(&path), &[])
                .map(|_| ())
                .map_err(|e| crate::error::Error::Input(format!("{e:#}"))),
        }
    }
}

/// A small, fast, seeded generator (xorshift64*): the same seed gives the same inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Integers at the edges where readers go wrong: sizes, counts and offsets.
const BOUNDARY: [u64; 10] = [0, 1, 0x7f, 0x80, 0xff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x7fff_ffff_ffff_ffff, u64::MAX];

/// One to four random edits of `seed`: a bit flip, a byte set to an edge value, a 4- or 8-byte
/// little-endian integer set to a boundary value, a run deleted, repeated or copied from
/// elsewhere, or the input cut short.
pub fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(v.len());
        match rng.below(7) {
            0 => v[at] ^= 1 << rng.below(8),
            1 => v[at] = [0u8, 0xff, 0x7f, 0x80, b'{', b'"', b'\\', b'%'][rng.below(8)],
            2 => {
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let b = BOUNDARY[rng.below(BOUNDARY.len())].to_le_bytes();
                for (i, x) in b[..width].iter().enumerate() {
                    if at + i < v.len() {
                        v[at + i] = *x;
                    }
                }
            }
            3 => {
                let n = 1 + rng.below(64.min(v.len() - at));
                v.drain(at..at + n);
            }
            4 => {
                let n = 1 + rng.below(64.min(v.len() - at));
                let run: Vec<u8> = v[at..at + n].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    v.splice(at..at, run.iter().copied());
                }
            }
            5 => {
                let from = rng.below(v.len());
                let n = 1 + rng.below(64.min(v.len() - from));
                let run: Vec<u8> = v[from..from + n].to_vec();
                let to = rng.below(v.len());
                v.splice(to..to, run);
            }
            _ => v.truncate(at),
        }
    }
    v
}

/// A failure: the input that made the target panic or hang, and what happened.
#[derive(Debug)]
pub struct Failure {
    pub target: Target,
    pub input: Vec<u8>,
    pub what: String,
}

/// What a campaign did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub inputs: usize,
    /// Inputs the reader accepted (the rest ended in errors).
    pub accepted: usize,
}

/// Runs `target` on every file of `corpus`, then on mutants of them until `budget` has passed,
/// in `dir` (the target's companions already there). Stops at the first panic or hang.
pub fn fuzz(target: Target, corpus: &[Vec<u8>], budget: Duration, seed: u64, dir: &Path) -> std::result::Result<Stats, Failure> {
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let t0 = Instant::now();
    let mut i = 0usize;
    while i < corpus.len() || (t0.elapsed() < budget && !corpus.is_empty()) {
        let input = if i < corpus.len() { corpus[i].clone() } else { mutate(&corpus[rng.below(corpus.len())], &mut rng) };
        i += 1;
        stats.inputs += 1;
        if one(target, &input, dir)? {
            stats.accepted += 1;
        }
    }
    Ok(stats)
}

/// Runs one input in a thread of its own, so that a hang is seen after [`HANG`]; returns whether
/// the reader accepted it.
fn one(target: Target, input: &[u8], dir: &Path) -> std::result::Result<bool, Failure> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (data, d): (Vec<u8>, PathBuf) = (input.to_vec(), dir.to_path_buf());
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(&data, &d).is_ok()));
        let _ = tx.send(r.map_err(|p| crate::error::panic_message(&*p, "").to_string()));
    });
    match rx.recv_timeout(HANG) {
        Ok(Ok(ok)) => Ok(ok),
        Ok(Err(msg)) => Err(Failure { target, input: input.to_vec(), what: format!("panicked: {msg}") }),
        Err(_) => Err(Failure { target, input: input.to_vec(), what: format!("ran longer than {HANG:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_deterministic_and_differ_from_the_seed() {
        let seed = b"GGUF\x03\x00\x00\x00 some header bytes".to_vec();
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let ma: Vec<Vec<u8>> = (0..50).map(|_| mutate(&seed, &mut a)).collect();
        let mb: Vec<Vec<u8>> = (0..50).map(|_| mutate(&seed, &mut b)).collect();
        assert_eq!(ma, mb);
        assert!(ma.iter().filter(|m| **m != seed).count() >= 45);
    }
}
