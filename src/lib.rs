//! r2m: RLHF in Rust on libtorch, built around R2M (Real-Time Aligned Reward Model, ICML 2026).
//!
//! Library first: the CLI in `src/main.rs` only parses, runs and reports. Modules, one per concept:
//! - [`model`]: the decoder (Llama, Mistral, Qwen2/3, Gemma 2/3, OLMo 2, Phi-3, GPT-NeoX), the BERT encoder, loading (HF folders, GGUF), KV-cache
//!   generation, LoRA, and export back to HF folders.
//! - [`tokenizer`]: HF tokenizers from tokenizer.json or GGUF metadata, with chat templates.
//! - [`train`]: AdamW, gradient clipping, LR schedules, choosing what trains.
//! - [`ffi`]: libtorch ops tch does not bind (csrc/fused.cpp): fused AdamW, MKL-packed linear.
//! - [`device`]: `cpu|cuda`, loading libtorch's CUDA backend on demand.
//! - [`dist`]: many processes on c10d (Gloo, TCPStore): the collectives, torchrun's environment
//!   and `--nproc`.
pub mod analysis;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod experiment;
pub mod ffi;
pub mod fuzz;
pub mod gguf_meta;
pub mod hub;
pub mod lock;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod paths;
pub mod profile;
pub mod r2m;
pub mod report;
pub mod reward;
pub mod rl;
pub mod sources;
pub mod testbed;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use tch;
