pub mod bert;
pub mod causal_lm;
pub mod config;
pub mod export;
pub mod generate;
pub mod kv_cache;
pub mod llama;
pub mod load;
pub mod lora;
pub mod packed;
pub mod params;
pub mod precision;
pub mod sentence;

pub use causal_lm::CausalLm;
pub use config::LlamaConfig;
pub use llama::Llama;
