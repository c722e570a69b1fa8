//! Reward-model ensembles (Coste et al. 2024, "Reward Model Ensembles Help Mitigate
//! Overoptimization"): k RMs trained with different seeds, combined per sample as the mean,
//! the worst case (min), or uncertainty-weighted optimisation (mean - lambda * variance, with the
//! population variance across members).
use crate::error::{Error, Result};
use crate::model::precision::Widen;
use crate::reward::model::RewardModel;
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum Combine {
    Mean,
    /// Worst-case optimisation (WCO).
    Min,
    /// Uncertainty-weighted optimisation (UWO): mean - lambda * var.
    Uwo {
        lambda: f64,
    },
}

/// Combines member scores (k, N) into (N).
pub fn combine(scores: &Tensor, how: Combine) -> Tensor {
    match how {
        Combine::Mean => scores.mean_dim(0, false, scores.compute_kind()),
        Combine::Min => scores.min_dim(0, false).0,
        Combine::Uwo { lambda } => scores.mean_dim(0, false, scores.compute_kind()) - scores.var_dim(0, false, false) * lambda,
    }
}

pub struct Ensemble {
    pub members: Vec<RewardModel>,
    pub combine: Combine,
}

impl Ensemble {
    pub fn new(members: Vec<RewardModel>, combine: Combine) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::Input("ensemble: no members".into()));
        }
        Ok(Ensemble { members, combine })
    }

    /// Scores rendered texts with every member, combined: (N).
    pub fn score_texts(&self, texts: &[String], add_special: bool, max_length: usize, batch_size: usize) -> Result<Tensor> {
        let all = self.members.iter().map(|m| m.score_texts(texts, add_special, max_length, batch_size)).collect::<Result<Vec<_>>>()?;
        Ok(combine(&Tensor::stack(&all, 0), self.combine))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations() {
        // 3 members x 2 samples.
        let s = Tensor::from_slice(&[1.0f32, 4.0, 2.0, 4.0, 3.0, 4.0]).view([3, 2]);
        let v = |t: Tensor| Vec::<f32>::try_from(t).unwrap();
        assert_eq!(v(combine(&s, Combine::Mean)), vec![2.0, 4.0]);
        assert_eq!(v(combine(&s, Combine::Min)), vec![1.0, 4.0]);
        // population variance of [1, 2, 3] = 2/3
        let u = v(combine(&s, Combine::Uwo { lambda: 0.5 }));
        assert!((u[0] - (2.0 - 0.5 * 2.0 / 3.0)).abs() < 1e-6 && (u[1] - 4.0).abs() < 1e-6, "{u:?}");
    }
}
