//! LoRA (Hu et al. 2021) around a `Linear`, as PEFT does it: y = W x + b + (alpha / r) B A x,
//! A (r, in) kaiming-uniform(a = sqrt 5), B (out, r) zeros, so a fresh adapter changes nothing.
//! `merged_weight` folds the adapter into W for export.
use tch::{Kind, Tensor};

pub struct LoraAdapter {
    pub a: Tensor, // (r, in)
    pub b: Tensor, // (out, r)
    pub scale: f64,
}

impl LoraAdapter {
    /// Fresh adapter tensors (CPU f32); the caller registers them as parameters.
    pub fn init(in_dim: i64, out_dim: i64, rank: i64) -> (Tensor, Tensor) {
        // kaiming_uniform_(a = sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in)
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = Tensor::rand([rank, in_dim], (Kind::Float, tch::Device::Cpu)) * (2.0 * bound) - bound;
        let b = Tensor::zeros([out_dim, rank], (Kind::Float, tch::Device::Cpu));
        (a, b)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scale
    }

    /// W + scale * B A, detached.
    pub fn delta(&self) -> Tensor {
        (self.b.matmul(&self.a) * self.scale).detach()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_adapter_is_zero_and_merge_matches_forward() {
        tch::manual_seed(0);
        let (a, _b) = LoraAdapter::init(6, 4, 2);
        let lora = LoraAdapter { a, b: Tensor::randn([4, 2], (Kind::Float, tch::Device::Cpu)), scale: 2.0 };
        let x = Tensor::randn([3, 6], (Kind::Float, tch::Device::Cpu));
        let via_delta = x.linear::<Tensor>(&lora.delta(), None);
        let diff = (lora.forward(&x) - via_delta).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        let (_, b0) = LoraAdapter::init(6, 4, 2);
        assert_eq!(b0.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
