//! When `generate` uses r2m's CPU kernels (csrc/decode.cpp) instead of ATen's ops inside the
//! model: attention over the KV cache ([`ffi::decode_attention`]), RMS norms ([`ffi::rms_norm`]),
//! RoPE ([`ffi::rope`]) and the gated MLP's SiLU ([`ffi::silu_mul`]), each one pass instead of
//! several tensor ops. A [`KernelScope`] turns them on for the current thread; they then apply to
//! f32 tensors on the CPU with autograd off. RoPE's bits equal the tensor ops'; the others' values
//! equal ATen's to f32 rounding, not bit for bit, so training and RL rollouts (whose log-probs
//! the archived runs were made with) stay on ATen's ops.
use crate::ffi;
use std::cell::Cell;
use tch::{Device, Kind, Tensor};

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
}

/// While it lives, the model's forward on this thread takes r2m's CPU kernels where they apply.
/// `generate` opens one with `GenerateConfig::cpu_kernels`.
pub struct KernelScope {
    prev: bool,
}

impl KernelScope {
    pub fn new(on: bool) -> Self {
        KernelScope { prev: ON.replace(on) }
    }
}

impl Drop for KernelScope {
    fn drop(&mut self) {
        ON.set(self.prev);
    }
}

/// Whether a kernel may take `x`: inside a [`KernelScope`], f32 on the CPU, autograd off.
pub fn apply_to(x: &Tensor) -> bool {
    ON.get() && x.kind() == Kind::Float && x.device() == Device::Cpu && !ffi::grad_enabled()
}
