//! Reward models: backbone + scalar head (`model`), Bradley-Terry training (`loss`, `train`),
//! ensembles (`ensemble`), and both as the RL engine's reward source (`source`), in this process or
//! on a reward-model rank of the job (`frozen`).
pub mod ensemble;
pub mod frozen;
pub mod loss;
pub mod model;
pub mod source;
pub mod train;

pub use model::RewardModel;
