//! The RL engine: RLOO, GRPO, REINFORCE++ and ReMax over one rollout and one trainer
//! (docs/rl-conventions.md). An algorithm is its advantage function plus its loss.
//!
//! - [`trainer`]: the run (built once), the loop over steps, evaluations, checkpoints;
//! - [`rollout`], [`step`], [`eval`]: one step's phases, and the evaluation; [`eval_rows`]: the
//!   evaluation rows a run reads back, shares with another run, or extends;
//! - [`advantages`], [`losses`]: the algorithms as pure functions;
//! - [`reward_source`]: the interfaces rewards and metrics come through;
//! - [`budget`]: sizing generation and micro-batches to the device's memory; [`config`]: the run's
//!   settings; [`clock`]: the per-phase timings.
pub mod advantages;
pub mod budget;
pub mod clock;
pub mod config;
pub mod eval;
pub mod eval_rows;
pub mod losses;
pub mod reward_source;
pub mod rollout;
pub mod step;
pub mod trainer;

pub use clock::Clock;
