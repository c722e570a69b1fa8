//! The overoptimization testbed (docs/testbed.md, design/testbed.md): seeded prompts with checkable
//! intent ([`prompts`]) and the gold reward that plays the person who asked ([`gold`]).
//!
//! The proxy RM is trained on gold-labelled pairs of pi_init samples, RL optimises the proxy, and
//! the gold measures what the asker wanted: overoptimization shows as proxy up, gold down.
pub mod gold;
pub mod pairs;
pub mod prompts;

pub use gold::{components_to_total, Components, Gold, GoldConfig, GoldScore, GoldWeights, KnownLogprobs};
pub use prompts::{generate_split, Format, Spec, Split, Task, TestbedPrompt};
