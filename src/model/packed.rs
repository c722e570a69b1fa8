//! Prepared weight copies for decoding: MKL-packed weights (CPU, f32), or bf16 casts (bf16
//! decoding: one cast per `generate` call instead of one per matmul, as autocast would for weights
//! that do not require grad); or, for batch-1 decoding, no copy but r2m's matrix-vector kernel.
//!
//! A decode step multiplies every weight by a (B, D) input, with the same B at every step. MKL's
//! GEMM re-packs the weight matrix into its blocked layout inside every call, which at small B
//! costs about as much as the multiplication; its packed API (`torch.ops.mkl._mkl_linear`, what
//! PyTorch's frozen CPU inference uses) packs each weight once. [`install`] packs a model's
//! weights for B rows and installs them for the current thread until the returned [`PackScope`]
//! drops; [`linear`] (used by every `Linear` and the LM head) takes the packed path for inputs of
//! exactly B rows and `at::linear` for everything else (prefill, training, other threads).
//! MKL's packed and unpacked kernels do the same arithmetic: results are equal (tested).
//! Where r2m's decode GEMM is faster than MKL's packed one ([`ffi::gemm_preferred`]: AVX-512
//! CPUs where measured), [`How::Gemm`] packs the weights in its layout instead: it prefetches the
//! next part of a weight while it multiplies the current one, so that the weights' load from
//! memory hides behind the arithmetic (same values to f32 rounding, not the same bits).
//! At batch 1 each product is a matrix-vector product, bound by how fast the weights stream from
//! memory; where r2m's kernel streams them faster than MKL's gemv ([`ffi::matvec_preferred`]),
//! [`How::Matvec`] sends one-row inputs to it (same values to f32 rounding, not the same bits).
//! `docs/benchmarks.md` has the measured effects.
use crate::ffi;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Below this batch the packed GEMM gains too little to repay packing (measured on SmolLM2-135M:
/// docs/benchmarks.md).
pub const MIN_BATCH: i64 = 8;

/// What a prepared copy is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum How {
    /// MKL's packed layout for inputs of exactly `rows` rows (CPU, f32).
    Mkl { rows: i64 },
    /// r2m's decode GEMM ([`ffi::gemm`]) for inputs of exactly `rows` rows (CPU, f32, AVX-512).
    Gemm { rows: i64 },
    /// A cast to this dtype (bf16 decoding, `model::precision`): the input is cast to it too.
    Cast(Kind),
    /// No copy: one-row inputs (a batch-1 decode step) go through r2m's streaming
    /// matrix-vector kernel ([`ffi::matvec`]) with the weight as it is (CPU, f32).
    Matvec,
}

struct Packs {
    how: How,
    /// How many copies `install` packed afresh (the rest came from the cache); read by tests.
    #[cfg_attr(not(test), allow(dead_code))]
    fresh: usize,
    /// Packed copy of each weight, by the weight's data pointer.
    by_weight: HashMap<usize, Packed>,
    /// r2m's GEMM: the first weight of the last call, and for each call (by its first weight) the
    /// weights of the call that followed it last time: what to prefetch at the end of a call.
    last: Option<usize>,
    after: HashMap<usize, Vec<usize>>,
}

struct Packed {
    /// The weight it was made from (a reference: its storage, hence its address, stays taken while
    /// the copy is kept) and that weight's version counter then.
    weight: Tensor,
    version: i64,
    packed: Tensor,
}

thread_local! {
    static PACKS: RefCell<Option<Packs>> = const { RefCell::new(None) };
}

/// Packed copies kept between decodes (one per model): weights that did not change since (the
/// frozen trunk and head in RL) are not packed again, and the ones an optimizer step changed are
/// re-packed into same-sized allocations. Freeing and re-making ~0.5 GB of copies per `generate`
/// call made glibc's heap grow by that much per RL step (docs/benchmarks.md).
#[derive(Default)]
pub struct Cache(Mutex<Option<Packs>>);

impl Cache {
    /// Frees the kept copies.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Keeps the packed weights installed for the current thread; dropping it restores what was
/// installed before (scopes nest) and hands the copies back to the cache they came from.
pub struct PackScope<'a> {
    prev: Option<Packs>,
    cache: Option<&'a Cache>,
}

impl Drop for PackScope<'_> {
    fn drop(&mut self) {
        let prev = self.prev.take();
        let ours = PACKS.with(|p| std::mem::replace(&mut *p.borrow_mut(), prev));
        if let Some(cache) = self.cache {
            *cache.0.lock().unwrap_or_else(|e| e.into_inner()) = ours;
        }
    }
}

/// Whether packing pays for a decode of `rows` rows over `weights`: CPU, f32, `rows >=
/// MIN_BATCH`, and the packed copies (about the weights' size again) fit in half the memory the
/// OS reports available (2 GiB when it reports nothing).
pub fn pays(device: Device, kind: Kind, rows: i64, weights: &[&Tensor]) -> bool {
    let bytes: i64 = weights.iter().map(|w| w.numel() as i64 * 4).sum();
    device == Device::Cpu
        && kind == Kind::Float
        && rows >= MIN_BATCH
        && bytes < crate::device::available_host_memory().unwrap_or(4 << 30) / 2
}

/// Prepares copies of `weights` (each (out, in); MKL packing: f32 on the CPU, others are left
/// as they are) and installs them until the scope drops. The weights must not change meanwhile.
/// With a `cache`, copies of unchanged weights (same storage, same version counter) prepared the
/// same way are taken from it instead of made again, and all copies go back to it when the scope
/// drops. MKL packing errors where libtorch was built without MKL.
pub fn install<'a>(weights: &[&Tensor], how: How, cache: Option<&'a Cache>) -> Result<PackScope<'a>, String> {
    let _guard = tch::no_grad_guard();
    let mut kept = cache
        .and_then(|c| c.0.lock().unwrap_or_else(|e| e.into_inner()).take())
        .filter(|k| k.how == how)
        .map(|k| k.by_weight)
        .unwrap_or_default();
    let mut by_weight = HashMap::new();
    let mut fresh = 0;
    for w in weights {
        let eligible = match how {
            How::Mkl { .. } | How::Gemm { .. } | How::Matvec => w.device() == Device::Cpu && w.kind() == Kind::Float,
            How::Cast(k) => w.is_floating_point() && w.kind() != k,
        };
        if !eligible || w.dim() != 2 {
            continue;
        }
        let key = w.data_ptr() as usize;
        let version = ffi::version(w).unwrap_or(-1);
        let entry = match kept.remove(&key) {
            Some(e) if e.version == version && version >= 0 && e.weight.data_ptr() == w.data_ptr() => e,
            stale => {
                // Free the stale copy first: the new one can then take its place in the heap.
                drop(stale);
                let packed = match how {
                    How::Mkl { rows } => ffi::mkl_pack(w, rows).map_err(|e| format!("MKL weight packing failed: {e}"))?,
                    How::Gemm { .. } => ffi::gemm_pack(w).map_err(|e| format!("r2m's GEMM packing failed: {e}"))?,
                    How::Cast(k) => w.to_kind(k),
                    How::Matvec => w.shallow_clone(),
                };
                fresh += 1;
                Packed { weight: w.shallow_clone(), version, packed }
            }
        };
        by_weight.insert(key, entry);
    }
    drop(kept);
    let prev = PACKS.with(|p| p.borrow_mut().replace(Packs { how, fresh, by_weight, last: None, after: HashMap::new() }));
    Ok(PackScope { prev, cache })
}

/// `x W^T + b` for `x` (..., in): through the installed copy of `w` when there is one (for MKL
/// packing: for `x`'s row count; for the matrix-vector kernel: for one row) and autograd is off,
/// else `at::linear`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Tensor {
    if let Some(mut y) = gemm(x, &[(w, bias)]) {
        return y.remove(0);
    }
    let packed = PACKS.with(|p| {
        let p = p.borrow();
        let p = p.as_ref()?;
        let rows = match p.how {
            How::Mkl { rows } => Some(rows),
            How::Matvec => Some(1),
            How::Cast(_) => None,
            How::Gemm { .. } => return None,
        };
        if let Some(rows) = rows {
            let d = *x.size().last()?;
            if d == 0 || x.numel() as i64 / d != rows {
                return None;
            }
        }
        p.by_weight.get(&(w.data_ptr() as usize)).map(|t| (t.packed.shallow_clone(), p.how))
    });
    if let Some((packed, how)) = packed {
        if !grad_enabled() {
            // The kernels return (rows, out): back to x's leading dims.
            let flat = match how {
                How::Mkl { rows } => ffi::mkl_linear(x, &packed, w, bias, rows),
                How::Gemm { .. } => unreachable!("taken by gemm above"),
                How::Matvec => ffi::matvec(x, w, bias, ffi::KernelBuild::Best),
                How::Cast(k) => return x.to_kind(k).linear(&packed, bias.map(|b| b.to_kind(k)).as_ref()),
            };
            if let Ok(y) = flat {
                return y.reshape(out_shape(x, w));
            }
        }
    }
    x.linear(w, bias)
}

/// [`linear`] of the same `x` by several layers `(w, bias)` (q, k and v; gate and up): through
/// one call of the matrix-vector kernel ([`ffi::matvec_many`]) when that is installed for every
/// weight, `x` is one row and autograd is off (one parallel region instead of one per weight, the
/// same values); else one [`linear`] each.
pub fn linear_many(x: &Tensor, layers: &[(&Tensor, Option<&Tensor>)]) -> Vec<Tensor> {
    if let Some(y) = gemm(x, layers) {
        return y;
    }
    let installed = PACKS.with(|p| {
        let p = p.borrow();
        let Some(p) = p.as_ref() else { return false };
        let d = x.size().last().copied().unwrap_or(0);
        p.how == How::Matvec
            && d > 0
            && x.numel() as i64 == d
            && layers.iter().all(|(w, _)| p.by_weight.contains_key(&(w.data_ptr() as usize)))
    });
    if installed && !grad_enabled() {
        if let Ok(y) = ffi::matvec_many(x, layers, ffi::KernelBuild::Best) {
            let mut start = 0;
            return layers
                .iter()
                .map(|(w, _)| {
                    let n = w.size()[0];
                    let part = y.narrow(0, start, n).reshape(out_shape(x, w));
                    start += n;
                    part
                })
                .collect();
        }
    }
    layers.iter().map(|(w, b)| linear(x, w, *b)).collect()
}

/// `x W_j^T + b_j` for each layer through one call of r2m's GEMM ([`ffi::gemm_many`]) when it is
/// installed for every weight and `x`'s row count and autograd is off, else `None`. Each call
/// records which weights came next after the previous one, and hands the kernel the weights that
/// came after this one last time, to prefetch while it finishes.
fn gemm(x: &Tensor, layers: &[(&Tensor, Option<&Tensor>)]) -> Option<Vec<Tensor>> {
    let (packed, next) = PACKS.with(|p| {
        let mut p = p.borrow_mut();
        let p = p.as_mut()?;
        let How::Gemm { rows } = p.how else { return None };
        let d = *x.size().last()?;
        if d == 0 || x.numel() as i64 / d != rows || layers.is_empty() || grad_enabled() {
            return None;
        }
        let keys: Vec<usize> = layers.iter().map(|(w, _)| w.data_ptr() as usize).collect();
        let packed: Vec<Tensor> = keys.iter().map(|k| p.by_weight.get(k).map(|e| e.packed.shallow_clone())).collect::<Option<_>>()?;
        let next: Vec<Tensor> = p
            .after
            .get(&keys[0])
            .map(|ks| ks.iter().filter_map(|k| p.by_weight.get(k)).map(|e| e.packed.shallow_clone()).collect())
            .unwrap_or_default();
        if let Some(last) = p.last.replace(keys[0]) {
            p.after.insert(last, keys);
        }
        Some((packed, next))
    })?;
    let weights: Vec<_> = layers.iter().zip(&packed).map(|((w, b), pk)| (pk, w.size()[0], *b)).collect();
    let next: Vec<&Tensor> = next.iter().collect();
    let ys = ffi::gemm_many(x, &weights, &next).ok()?;
    Some(ys.into_iter().zip(layers).map(|(y, (w, _))| y.reshape(out_shape(x, w))).collect())
}

/// The shape of `x W^T` for `x` (..., in) and `w` (out, in): x's leading dims, then out.
fn out_shape(x: &Tensor, w: &Tensor) -> Vec<i64> {
    let mut shape = x.size();
    *shape.last_mut().expect("x has a last dim") = w.size()[0];
    shape
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
        let scope = match install(&[&w], How::Mkl { rows: 8 }, None) {
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

    /// With r2m's GEMM installed for 8 rows, 8-row inputs ((8, D) and (8, 1, D)) go through it, with
    /// the bias, and agree with the plain product to f32 rounding; other row counts and autograd
    /// take the plain path.
    #[test]
    fn gemm_rows_take_r2m_gemm() {
        if !ffi::gemm_available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        tch::manual_seed(4);
        let w = Tensor::randn([50, 40], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([50], (Kind::Float, Device::Cpu));
        let scope = install(&[&w], How::Gemm { rows: 8 }, None).unwrap();
        let packed = ffi::gemm_pack(&w).unwrap();
        let _g = tch::no_grad_guard();
        let x = Tensor::randn([8, 1, 40], (Kind::Float, Device::Cpu));
        for (x, b) in [(x.shallow_clone(), None), (x.view([8, 40]), Some(&bias))] {
            let got = linear(&x, &w, b);
            assert_eq!(got.size(), [&x.size()[..x.dim() - 1], &[50]].concat());
            assert!(got.reshape([8, 50]).equal(&ffi::gemm(&x, &packed, 50, b).unwrap()), "not the kernel's result");
            assert!(got.allclose(&x.linear(&w, b), 1e-5, 1e-5, false));
        }
        let x3 = Tensor::randn([3, 40], (Kind::Float, Device::Cpu));
        assert!(linear(&x3, &w, None).equal(&x3.linear::<Tensor>(&w, None)), "3 rows: plain path");
        drop(_g);
        let wg = w.detach().set_requires_grad(true);
        assert!(tch::with_grad(|| linear(&x.view([8, 40]), &wg, None)).requires_grad());
        drop(scope);
    }

    /// With the matrix-vector kernel installed, one-row inputs ((D), (1, D), (1, 1, D)) go through
    /// it, with the bias and the weight's later in-place changes; other row counts and autograd take
    /// the plain path.
    #[test]
    fn one_row_inputs_take_the_matvec_kernel() {
        tch::manual_seed(2);
        let w = Tensor::randn([37, 40], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([37], (Kind::Float, Device::Cpu));
        let scope = install(&[&w], How::Matvec, None).unwrap();
        let _g = tch::no_grad_guard();
        for shape in [vec![40], vec![1, 40], vec![1, 1, 40]] {
            let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
            for b in [None, Some(&bias)] {
                let got = linear(&x, &w, b);
                assert_eq!(got.size(), [&shape[..shape.len() - 1], &[37]].concat());
                let kernel = ffi::matvec(&x, &w, b, ffi::KernelBuild::Best).unwrap();
                assert!(got.reshape([37]).equal(&kernel), "{shape:?}: not the kernel's result");
                assert!(got.allclose(&x.linear(&w, b), 1e-5, 1e-5, false), "{shape:?}");
            }
        }
        let x1 = Tensor::randn([1, 40], (Kind::Float, Device::Cpu));
        let _ = w.shallow_clone().g_mul_scalar_(2.0);
        assert!(linear(&x1, &w, None).equal(&ffi::matvec(&x1, &w, None, ffi::KernelBuild::Best).unwrap().reshape([1, 37])));
        let x2 = Tensor::randn([2, 40], (Kind::Float, Device::Cpu));
        assert!(linear(&x2, &w, None).equal(&x2.linear::<Tensor>(&w, None)), "two rows: plain path");
        drop(_g);
        let wg = w.detach().set_requires_grad(true);
        assert!(tch::with_grad(|| linear(&x1, &wg, None)).requires_grad());
        drop(scope);
    }

    /// `linear_many` gives each layer's `linear` result, shaped as x, in one kernel call where
    /// every weight is installed for the matrix-vector kernel, and falls back to one `linear` each
    /// for two-row inputs and for a weight not installed.
    #[test]
    fn linear_many_equals_one_linear_each() {
        tch::manual_seed(3);
        let (wq, wk) = (Tensor::randn([37, 40], (Kind::Float, Device::Cpu)), Tensor::randn([9, 40], (Kind::Float, Device::Cpu)));
        let bias = Tensor::randn([9], (Kind::Float, Device::Cpu));
        let other = Tensor::randn([5, 40], (Kind::Float, Device::Cpu));
        let _scope = install(&[&wq, &wk], How::Matvec, None).unwrap();
        let _g = tch::no_grad_guard();
        for rows in [1, 2] {
            let x = Tensor::randn([1, rows, 40], (Kind::Float, Device::Cpu));
            for layers in [vec![(&wq, None), (&wk, Some(&bias))], vec![(&wq, None), (&other, None)]] {
                let got = linear_many(&x, &layers);
                assert_eq!(got.len(), layers.len());
                for ((w, b), y) in layers.iter().zip(&got) {
                    assert_eq!(y.size(), [1, rows, w.size()[0]]);
                    assert!(y.equal(&linear(&x, w, *b)), "{rows} rows: differs from linear");
                }
            }
        }
    }

    /// A cache hands back the copies of unchanged weights (the same packed tensor) and re-packs a
    /// weight written in place (optimizer-style, under no_grad: its version counter moves), so the
    /// products stay equal to the plain ones; other row counts start afresh.
    #[test]
    fn cache_reuses_unchanged_weights_and_repacks_changed_ones() {
        tch::manual_seed(1);
        let frozen = Tensor::randn([32, 24], (Kind::Float, Device::Cpu));
        let trained = Tensor::randn([32, 24], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([8, 24], (Kind::Float, Device::Cpu));
        let cache = Cache::default();
        let fresh = || PACKS.with(|p| p.borrow().as_ref().map(|p| p.fresh));
        let scope = match install(&[&frozen, &trained], How::Mkl { rows: 8 }, Some(&cache)) {
            Ok(s) => s,
            Err(e) if !cfg!(target_arch = "x86_64") => {
                eprintln!("skipped: this libtorch has no MKL ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(fresh(), Some(2));
        drop(scope);
        assert!(PACKS.with(|p| p.borrow().is_none()), "scope restored");
        assert!(cache.0.lock().unwrap().is_some(), "copies handed back to the cache");

        let _g = tch::no_grad_guard();
        let v0 = ffi::version(&trained).unwrap();
        let _ = trained.shallow_clone().g_add_scalar_(0.5);
        assert!(ffi::version(&trained).unwrap() > v0, "an in-place write under no_grad bumps the version");
        let scope = install(&[&frozen, &trained], How::Mkl { rows: 8 }, Some(&cache)).unwrap();
        assert_eq!(fresh(), Some(1), "only the changed weight is packed again");
        for w in [&frozen, &trained] {
            assert!(linear(&x, w, None).equal(&x.linear::<Tensor>(w, None)), "packed != plain after an update");
        }
        drop(scope);
        // A copy from elsewhere (a checkpoint load) is caught too.
        trained.shallow_clone().copy_(&frozen);
        let scope = install(&[&frozen, &trained], How::Mkl { rows: 8 }, Some(&cache)).unwrap();
        assert!(linear(&x, &trained, None).equal(&x.linear::<Tensor>(&frozen, None)));
        drop(scope);
        // Another row count: nothing reused, still right.
        let x4 = Tensor::randn([4, 24], (Kind::Float, Device::Cpu));
        let scope = install(&[&frozen, &trained], How::Mkl { rows: 4 }, Some(&cache)).unwrap();
        assert_eq!(fresh(), Some(2), "packed for other rows: nothing reused");
        assert!(linear(&x4, &frozen, None).equal(&x4.linear::<Tensor>(&frozen, None)));
        drop(scope);
        cache.clear();
        assert!(cache.0.lock().unwrap().is_none());
    }
}
