//! The overoptimization testbed (docs/testbed.md): seeded prompts with checkable intent
//! ([`prompts`]), the gold reward that plays the person who asked ([`gold`]), gold-labelled pairs
//! ([`pairs`]), and the gold as the RL engine's reward and metric source ([`source`]).
//!
//! The proxy RM is trained on gold-labelled pairs of pi_init samples, RL optimises the proxy, and
//! the gold measures what the asker wanted: overoptimization shows as proxy up, gold down.
pub mod checks;
pub mod gold;
pub mod pairs;
pub mod prompts;
pub mod source;

pub use gold::{components_to_total, Components, Gold, GoldConfig, GoldScore, GoldWeights};
pub use prompts::{generate_split, Format, Spec, Split, Task, TestbedPrompt};
