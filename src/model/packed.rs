//! MKL-packed weights for CPU decoding.
//!
//! A decode step multiplies every weight by a (B, D) input, with the same B at every step. MKL's
//! GEMM re-packs the weight matrix into its blocked layout inside every call, which at small B
//! costs about as much as the multiplication; its packed API (`torch.ops.mkl._mkl_linear`, what
//! PyTorch's frozen CPU inference uses) packs each weight once. [`install`] packs a model's
//! weights for B rows and installs them for the current thread until the returned [`PackScope`]
//! drops; [`linear`] (used by every `Linear` and the LM head) takes the packed path for inputs of
//! exactly B rows and `at::linear` for everything else (prefill, training, other threads).
//! MKL's packed and unpacked kernels do the same arithmetic: results are equal (tested).
//! `docs/benchmarks.md` has the measured effect.
use crate::ffi;
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Below this batch the packed GEMM gains too little to repay packing (measured on SmolLM2-135M:
/// docs/benchmarks.md).
pub const MIN_BATCH: i64 = 8;

struct Packs {
    rows: i64,
    /// Packed copy of each weight, by the weight's data pointer.
    by_weight: HashMap<usize, Tensor>,
}

thread_local! {
    static PACKS: RefCell<Option<Packs>> = const { RefCell::new(None) };
}

/// Keeps the packed weights installed for the current thread; dropping it restores what was
/// installed before (scopes nest).
pub struct PackScope {
    prev: Option<Packs>,
}

impl Drop for PackScope {
    fn drop(&mut self) {
        let prev = self.prev.take();
        PACKS.with(|p| *p.borrow_mut() = prev);
    }
}

/// Whether packing pays for a decode of `rows` rows over `weights`: CPU, f32, `rows >=
/// MIN_BATCH`, and the packed copies (about the weights' size again) fit in half the memory the
/// OS reports available (2 GiB when it reports nothing).
pub fn pays(device: Device, kind: Kind, rows: i64, weights: &[&Tensor]) -> bool {
    let bytes: i64 = weights.iter().map(|w| w.numel() as i64 * 4).sum();
    device == Device::Cpu && kind == Kind::Float && rows >= MIN_BATCH && bytes < available_memory().unwrap_or(4 << 30) / 2
}

/// MemAvailable from /proc/meminfo, in bytes (Linux).
fn available_memory() -> Option<i64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Packs `weights` (each (out, in), f32 on the CPU; others are left unpacked) for inputs of
/// `rows` rows and installs them until the scope drops. The weights must not change meanwhile.
/// Errors where libtorch was built without MKL.
pub fn install(weights: &[&Tensor], rows: i64) -> Result<PackScope, String> {
    let _guard = tch::no_grad_guard();
    let mut by_weight = HashMap::new();
    for w in weights {
        if w.device() == Device::Cpu && w.kind() == Kind::Float && w.dim() == 2 {
            by_weight.insert(w.data_ptr() as usize, ffi::mkl_pack(w, rows).map_err(|e| format!("MKL weight packing failed: {e}"))?);
        }
    }
    let prev = PACKS.with(|p| p.borrow_mut().replace(Packs { rows, by_weight }));
    Ok(PackScope { prev })
}

/// `x W^T + b` for `x` (..., in): through the installed packed copy of `w` when there is one for
/// `x`'s row count and autograd is off, else `at::linear`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let packed = PACKS.with(|p| {
        let p = p.borrow();
        let p = p.as_ref()?;
        let d = *x.size().last()?;
        if d == 0 || x.numel() as i64 / d != p.rows {
            return None;
        }
        p.by_weight.get(&(w.data_ptr() as usize)).map(|t| (t.shallow_clone(), p.rows))
    });
    if let Some((packed, rows)) = packed {
        if !grad_enabled() {
            if let Ok(y) = ffi::mkl_linear(x, &packed, w, bias, rows) {
                let mut shape = x.size();
                *shape.last_mut().expect("x has a last dim") = w.size()[0];
                return y.reshape(shape);
            }
        }
    }
    x.linear(w, bias)
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`; the packed op
/// has no backward).
fn grad_enabled() -> bool {
    // tch has no getter: setting returns the previous value, which is restored at once.
    // SAFETY: plain calls into libtorch's thread-local grad mode.
    unsafe {
        let prev = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(prev);
        prev != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed and unpacked products agree exactly, for (B, D) and (B, 1, D) inputs and with a
    /// bias; other row counts, other weights and autograd take the plain path; the scope restores.
    #[test]
    fn packed_linear_equals_plain_and_is_scoped() {
        tch::manual_seed(0);
        let w = Tensor::randn([48, 40], (Kind::Float, Device::Cpu));
        let other = Tensor::randn([48, 40], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([48], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([8, 1, 40], (Kind::Float, Device::Cpu));
        let scope = match install(&[&w], 8) {
            Ok(s) => s,
            // PyTorch's x86-64 wheels are built with MKL; elsewhere the op may be missing.
            Err(e) if !cfg!(target_arch = "x86_64") => {
                eprintln!("skipped: this libtorch has no MKL ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let _g = tch::no_grad_guard();
        for (x, b) in [(x.shallow_clone(), None), (x.view([8, 40]), Some(&bias))] {
            let got = linear(&x, &w, b);
            assert_eq!(got.size(), [&x.size()[..x.dim() - 1], &[48]].concat());
            assert!(got.equal(&x.linear(&w, b)), "packed != plain");
        }
        // 3 rows: plain path, still right.
        let x3 = Tensor::randn([3, 40], (Kind::Float, Device::Cpu));
        assert!(linear(&x3, &w, None).equal(&x3.linear::<Tensor>(&w, None)));
        // An unpacked weight of the same shape must not pick up w's packed copy.
        let x8 = x.view([8, 40]);
        assert!(linear(&x8, &other, None).equal(&x8.linear::<Tensor>(&other, None)));
        drop(_g);
        // With autograd on, the plain (differentiable) path.
        let wg = w.detach().set_requires_grad(true);
        let y = tch::with_grad(|| linear(&x8, &wg, None));
        assert!(y.requires_grad());
        drop(scope);
        assert!(PACKS.with(|p| p.borrow().is_none()));
    }
}
