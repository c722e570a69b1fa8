//! The RL engine: RLOO, GRPO, REINFORCE++ and ReMax over one rollout and one trainer
//! (rl-conventions.md). An algorithm is its advantage function plus its loss.
pub mod advantages;
pub mod budget;
pub mod config;
pub mod losses;
pub mod reward_source;
pub mod sources;
pub mod trainer;
