//! Compute precision: f32, or bf16 autocast, PyTorch's mixed-precision recipe (`torch.autocast`
//! with bfloat16): the weights stay f32 (the master copy the optimiser updates); matmuls, linear
//! layers and attention run in bf16 on bf16 casts of their inputs; the residual stream, RMSNorm,
//! softmax / log-softmax, log-probs and every loss stay f32 (r2m casts the logits to f32 before
//! any of them). Decoding keeps bf16 copies of the weights for the whole `generate` call
//! (`model::packed`) and a bf16 KV cache. f32 is the CPU default, bf16 the CUDA one
//! (`policy.dtype = "auto"`).
use crate::error::{Error, Result};
use crate::ffi;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// `auto` (bf16 on CUDA, f32 elsewhere), `f32` / `float32`, `bf16` / `bfloat16`; `what` names
    /// the setting in the error.
    pub fn resolve(name: &str, device: Device, what: &str) -> Result<Precision> {
        match name {
            "auto" => Ok(if device.is_cuda() { Precision::Bf16 } else { Precision::F32 }),
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(Error::Input(format!("{what} = {other:?}: expected \"auto\", \"f32\" or \"bf16\""))),
        }
    }

    /// The lower precision matmuls run in, if any.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Autocast on for this thread and `device`'s type until dropped (nests; the state before is
/// restored). A no-op for f32.
pub struct Autocast {
    device: Device,
    prev: Option<[i32; 2]>,
}

impl Autocast {
    pub fn new(precision: Precision, device: Device) -> Autocast {
        let prev = precision.autocast_kind().map(|k| {
            // Only thread-local flags are set: this cannot fail short of a broken libtorch.
            ffi::autocast_enter(device, k).expect("setting libtorch's autocast state")
        });
        Autocast { device, prev }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if let Some(prev) = &self.prev {
            ffi::autocast_exit(self.device, prev).expect("restoring libtorch's autocast state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    /// Inside the guard a linear layer runs in bf16 over f32 weights (its output is bf16 and
    /// equals the product of the bf16-rounded operands); elementwise ops keep f32; after the
    /// guard everything is f32 again, and nested guards restore their outer state.
    #[test]
    fn autocast_runs_matmuls_in_bf16_and_restores() {
        let w = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let f32_out = x.linear::<Tensor>(&w, None);
        {
            let _a = Autocast::new(Precision::Bf16, Device::Cpu);
            let y = x.linear::<Tensor>(&w, None);
            assert_eq!(y.kind(), Kind::BFloat16);
            let want = x.to_kind(Kind::BFloat16).linear::<Tensor>(&w.to_kind(Kind::BFloat16), None);
            assert!(y.equal(&want));
            assert_eq!((&x + 1.0).kind(), Kind::Float, "elementwise ops are not cast");
            {
                let _b = Autocast::new(Precision::F32, Device::Cpu);
                assert_eq!(x.linear::<Tensor>(&w, None).kind(), Kind::BFloat16, "an f32 guard changes nothing");
            }
            assert_eq!(x.linear::<Tensor>(&w, None).kind(), Kind::BFloat16);
            let rel = (y.to_kind(Kind::Float) - &f32_out).abs().max().double_value(&[]) / f32_out.abs().max().double_value(&[]);
            assert!(rel < 2e-2, "bf16 product off by {rel} of the scale");
        }
        assert_eq!(x.linear::<Tensor>(&w, None).kind(), Kind::Float, "restored");
    }

    #[test]
    fn resolve_names_the_setting() {
        assert_eq!(Precision::resolve("auto", Device::Cpu, "x").unwrap(), Precision::F32);
        assert_eq!(Precision::resolve("auto", Device::Cuda(0), "x").unwrap(), Precision::Bf16);
        assert_eq!(Precision::resolve("bfloat16", Device::Cpu, "x").unwrap(), Precision::Bf16);
        let e = Precision::resolve("fp8", Device::Cpu, "policy.dtype").unwrap_err().to_string();
        assert!(e.contains("policy.dtype") && e.contains("fp8"), "{e}");
    }
}
