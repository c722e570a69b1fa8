//! Reward models: backbone + scalar head (`model`), Bradley-Terry training (`loss`, `train`),
//! ensembles (`ensemble`).
pub mod ensemble;
pub mod loss;
pub mod model;
pub mod train;

pub use model::RewardModel;
