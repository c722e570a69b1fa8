//! Integration tests: one binary (see Cargo.toml `[[test]] it`). Reference values come from Python
//! (transformers, sentence-transformers, tokenizers) in the bootstrap's virtualenv.
mod analysis;
mod bert;
mod common;
mod data;
mod experiment;
mod grid;
mod llama;
mod gguf;
mod tokenizer;
mod train;
mod smollm2;
mod reward;
mod testbed;
mod rl;
mod configs;
