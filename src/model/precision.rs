//! Compute precision: f32, or bf16 autocast, PyTorch's mixed-precision recipe (`torch.autocast`
//! with bfloat16): the weights stay f32 (the master copy the optimiser updates); matmuls, linear
//! layers and attention run in bf16 on bf16 casts of their inputs; the residual stream, RMSNorm,
//! softmax / log-softmax, log-probs and every loss stay f32 (r2m casts the logits to f32 before
//! any of them). Decoding keeps bf16 copies of the weights for the whole `generate` call
//! (`model::packed`) and a bf16 KV cache. f32 is the CPU default, bf16 the CUDA one
//! (`policy.dtype = "auto"`).
//!
//! f64 holds the weights and runs every op in double precision, on the CPU only. It is for exact
//! checks, not for training speed: a result that must not depend on how a batch is split (data
//! parallel ranks against one process) agrees to ~1e-12 in f64, where f32's rounding leaves ~1e-5.
//! Values of any kind are computed in [`compute_kind`]: f64 stays f64, everything else is f32.
use crate::error::{Error, Result};
use crate::ffi;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F64,
}

impl Precision {
    /// `auto` (bf16 on CUDA, f32 elsewhere), `f32` / `float32`, `bf16` / `bfloat16`; `what` names
    /// the setting in the error.
    pub fn resolve(name: &str, device: Device, what: &str) -> Result<Precision> {
        match name {
            "auto" => Ok(if device.is_cuda() { Precision::Bf16 } else { Precision::F32 }),
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f64" | "float64" | "fp64" if device.is_cuda() => {
                Err(Error::Input(format!("{what} = \"f64\" runs on the CPU only (the device is {device:?})")))
            }
            "f64" | "float64" | "fp64" => Ok(Precision::F64),
            other => Err(Error::Input(format!("{what} = {other:?}: expected \"auto\", \"f32\", \"bf16\" or \"f64\""))),
        }
    }

    /// The lower precision matmuls run in, if any.
    pub fn autocast_kind(self) -> Option<Kind> {
        match self {
            Precision::F32 | Precision::F64 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
        }
    }

    /// The kind the weights are held in: f64 for [`Precision::F64`], f32 otherwise (bf16 keeps
    /// f32 master weights).
    pub fn weight_kind(self) -> Kind {
        match self {
            Precision::F64 => Kind::Double,
            Precision::F32 | Precision::Bf16 => Kind::Float,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F64 => "f64",
        }
    }
}

/// The kind floating-point math on values of kind `k` runs in: f64 stays f64; f32, bf16, f16 and
/// integer or boolean masks are computed in f32.
pub fn compute_kind(k: Kind) -> Kind {
    if k == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// `Tensor` in the kind r2m computes it in.
pub trait Widen {
    /// [`compute_kind`] of this tensor's kind.
    fn compute_kind(&self) -> Kind;
    /// This tensor in its [`compute_kind`] (a shallow copy when it already is).
    fn widen(&self) -> Tensor;
}

impl Widen for Tensor {
    fn compute_kind(&self) -> Kind {
        compute_kind(self.kind())
    }

    fn widen(&self) -> Tensor {
        let k = self.compute_kind();
        if self.kind() == k {
            self.shallow_clone()
        } else {
            self.to_kind(k)
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
        assert_eq!(Precision::resolve("f64", Device::Cpu, "x").unwrap(), Precision::F64);
        let e = Precision::resolve("f64", Device::Cuda(0), "reward.dtype").unwrap_err().to_string();
        assert!(e.contains("reward.dtype") && e.contains("CPU only"), "{e}");
    }
}
