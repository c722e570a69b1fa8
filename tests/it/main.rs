//! Integration tests: one binary (see Cargo.toml `[[test]] it`). Reference values come from Python
//! (transformers, sentence-transformers, tokenizers) in the bootstrap's virtualenv.
mod analysis;
mod archs;
mod bert;
mod common;
mod configs;
mod data;
mod dist;
mod experiment;
mod fuzz;
mod gemma3;
mod gguf;
mod grid;
mod llama;
mod reliability;
mod reward;
mod rl;
mod smollm2;
mod testbed;
mod tokenizer;
mod train;
