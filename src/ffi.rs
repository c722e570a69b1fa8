//! libtorch ops that tch does not bind, compiled from csrc/fused.cpp by build.rs: ops over tensor
//! lists (tch's generator skips them: the fused AdamW kernel), `.grad = None`, and ops registered
//! only through the dispatcher (MKL weight packing), and activation checkpointing (a custom
//! autograd function that calls back into Rust), what libtorch sees of the CPU; and r2m's own
//! decoding kernels from csrc/decode.cpp (sampling, matrix-vector). Safe wrappers; every C++ exception comes back as
//! `Err(message)`.
use std::os::raw::{c_char, c_void};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn r2m_fused_adamw(
        params: *const *mut C_tensor,
        grads: *const *mut C_tensor,
        exp_avgs: *const *mut C_tensor,
        exp_avg_sqs: *const *mut C_tensor,
        steps: *const *mut C_tensor,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_tensor_version(t: *mut C_tensor, out: *mut i64, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_autocast_enter(device: i32, dtype: i32, prev: *mut i32, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_autocast_exit(device: i32, prev: *const i32, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_clear_grads(ts: *const *mut C_tensor, n: i64, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_mkl_pack(w: *mut C_tensor, m: i64, out: *mut *mut C_tensor, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_mkl_linear(
        x: *mut C_tensor,
        packed: *mut C_tensor,
        w: *mut C_tensor,
        bias: *mut C_tensor,
        m: i64,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_checkpoint(
        x: *mut C_tensor,
        params: *const *mut C_tensor,
        n: i64,
        ctx: *mut c_void,
        call: BlockCall,
        drop: BlockDrop,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_grad_enabled() -> i32;
    fn r2m_cpu_isa(out: *mut c_char, out_len: usize, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_decode_kernels() -> *const c_char;
    fn r2m_mkl_vendor_overridden() -> i32;
    fn r2m_sample_logits(
        logits: *mut C_tensor,
        temperature: f64,
        u: *mut C_tensor,
        want: i32,
        tok: *mut *mut C_tensor,
        lp: *mut *mut C_tensor,
        ent: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_matvec_preferred() -> i32;
    fn r2m_rms_norm(
        x: *mut C_tensor,
        w: *mut C_tensor,
        eps: f64,
        add_one: i32,
        want: i32,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_rope(
        x: *mut C_tensor,
        cos: *mut C_tensor,
        sin: *mut C_tensor,
        want: i32,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_silu_mul(g: *mut C_tensor, u: *mut C_tensor, want: i32, out: *mut *mut C_tensor, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_decode_attention(
        q: *mut C_tensor,
        k: *mut C_tensor,
        v: *mut C_tensor,
        valid: *mut C_tensor,
        scale: f64,
        want: i32,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_gemm_available() -> i32;
    fn r2m_gemm_preferred() -> i32;
    fn r2m_gemm_pack(w: *mut C_tensor, out: *mut *mut C_tensor, err: *mut c_char, err_len: usize) -> i32;
    fn r2m_gemm(
        x: *mut C_tensor,
        packed: *const *mut C_tensor,
        ns: *const i64,
        biases: *const *mut C_tensor,
        count: i32,
        next: *const *mut C_tensor,
        next_count: i32,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    fn r2m_matvec(
        x: *mut C_tensor,
        ws: *const *mut C_tensor,
        biases: *const *mut C_tensor,
        count: i32,
        want: i32,
        out: *mut *mut C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
}

type BlockCall = extern "C" fn(ctx: *mut c_void, x: *mut C_tensor, err: *mut c_char, err_len: usize) -> *mut C_tensor;
type BlockDrop = extern "C" fn(ctx: *mut c_void);

/// Calls `f(err, err_len)`, which returns the C side's status, and turns a non-zero status into
/// the message the C side wrote.
fn call(f: impl FnOnce(*mut c_char, usize) -> i32) -> Result<(), String> {
    let mut err = vec![0 as c_char; 1024];
    if f(err.as_mut_ptr(), err.len()) == 0 {
        Ok(())
    } else {
        // SAFETY: the C side NUL-terminates within err_len (and the buffer starts zeroed).
        Err(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
    }
}

/// Like [`call`] for an entry point that hands back one new tensor through its out-pointer
/// argument: `f(out, err, err_len)`; on success the tensor is ours (tch frees it on drop).
fn call_tensor(f: impl FnOnce(*mut *mut C_tensor, *mut c_char, usize) -> i32) -> Result<Tensor, String> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    call(|e, l| f(&mut out, e, l))?;
    // SAFETY: on success the C side stored a new heap `at::Tensor` in `out`, which we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

fn ptrs(ts: &[&Tensor]) -> Vec<*mut C_tensor> {
    ts.iter().map(|t| t.as_ptr() as *mut C_tensor).collect()
}

fn ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// libtorch's fused AdamW (`at::_fused_adamw_`, what `torch.optim.AdamW(fused=True)` calls) on
/// equal-length lists; `steps` must already hold the new step count. All tensors of one call share
/// a device and dtype.
#[allow(clippy::too_many_arguments)]
pub fn fused_adamw(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    lr: f64,
    beta1: f64,
    beta2: f64,
    weight_decay: f64,
    eps: f64,
) -> Result<(), String> {
    let n = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len(), steps.len()].iter().any(|&l| l != n) {
        return Err("tensor lists of different lengths".into());
    }
    let (p, g, m, v, s) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs), ptrs(steps));
    // SAFETY: every pointer is a live `at::Tensor` owned by a borrowed `Tensor` for the call; the
    // C++ side only reads the lists.
    call(|e, l| unsafe {
        r2m_fused_adamw(p.as_ptr(), g.as_ptr(), m.as_ptr(), v.as_ptr(), s.as_ptr(), n as i64, lr, beta1, beta2, weight_decay, eps, e, l)
    })
}

/// Sets `.grad` of each tensor to undefined (`tensor.grad = None`, which tch cannot express).
pub fn clear_grads(ts: &[&Tensor]) -> Result<(), String> {
    let p = ptrs(ts);
    // SAFETY: as in `fused_adamw`.
    call(|e, l| unsafe { r2m_clear_grads(p.as_ptr(), p.len() as i64, e, l) })
}

/// Turns autocast on for `device`'s type on this thread with `kind` as its lower precision; the
/// returned state goes back to [`autocast_exit`] (torch.autocast's enter and exit).
pub fn autocast_enter(device: tch::Device, kind: tch::Kind) -> Result<[i32; 2], String> {
    let mut prev = [0i32; 2];
    let code = match kind {
        tch::Kind::BFloat16 => 0,
        tch::Kind::Half => 1,
        k => return Err(format!("autocast to {k:?}: only bf16 and f16")),
    };
    // SAFETY: the C side writes two ints into `prev`.
    call(|e, l| unsafe { r2m_autocast_enter(i32::from(device.is_cuda()), code, prev.as_mut_ptr(), e, l) })?;
    Ok(prev)
}

/// Restores the autocast state `prev` that [`autocast_enter`] returned.
pub fn autocast_exit(device: tch::Device, prev: &[i32; 2]) -> Result<(), String> {
    // SAFETY: the C side reads two ints.
    call(|e, l| unsafe { r2m_autocast_exit(i32::from(device.is_cuda()), prev.as_ptr(), e, l) })
}

/// The tensor's version counter (`tensor._version`): bumped by every in-place write (optimizer
/// steps, `copy_`), under no_grad too.
pub fn version(t: &Tensor) -> Result<i64, String> {
    let mut v = 0i64;
    // SAFETY: `t` is live for the call; the C side writes one i64.
    call(|e, l| unsafe { r2m_tensor_version(ptr(t), &mut v, e, l) })?;
    Ok(v)
}

/// What libtorch's CPU kernels see of this CPU: ATen's dispatch level (`"AVX512"`, `"AVX2"`,
/// `"DEFAULT"`, ...; `torch.backends.cpu.get_cpu_capability()`) and the instruction-set features
/// present (`avx2`, `avx512_bf16`, `amx_tile`, ...), sorted.
pub fn cpu_isa() -> Result<(String, Vec<String>), String> {
    let mut buf = vec![0 as c_char; 4096];
    // SAFETY: the C side writes a NUL-terminated string of at most buf.len() bytes.
    call(|e, l| unsafe { r2m_cpu_isa(buf.as_mut_ptr(), buf.len(), e, l) })?;
    // SAFETY: NUL-terminated by the C side (copy_error).
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
    let (level, features) = s.split_once(';').unwrap_or((&s, ""));
    Ok((level.to_string(), features.split(',').filter(|f| !f.is_empty()).map(str::to_string).collect()))
}

/// Which build of r2m's CPU kernels (csrc/decode.cpp: sampling, matrix-vector) this CPU runs: `"avx512"`, `"avx2"` or
/// `"baseline"` (`R2M_CPU_KERNELS=avx2|baseline` forces a lower one).
pub fn decode_kernels() -> &'static str {
    // SAFETY: the C side returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(r2m_decode_kernels()) }.to_str().unwrap_or("baseline")
}

/// Whether MKL runs its kernels for the CPU's instruction sets only because r2m answered its
/// vendor check (csrc/mkl_cpu.cpp): true on a non-Intel x86-64 CPU, unless
/// `R2M_MKL_VENDOR_CHECK=mkl` keeps MKL's own answer (its generic code paths there).
pub fn mkl_vendor_overridden() -> bool {
    // SAFETY: no arguments; reads the environment and MKL's vendor check.
    unsafe { r2m_mkl_vendor_overridden() == 1 }
}

/// A build of r2m's CPU kernels, for tests that compare them: `Baseline` < `Avx2` < `Avx512`;
/// asking for more than the CPU has gives the CPU's best.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelBuild {
    Best = -1,
    Baseline = 0,
    Avx2 = 1,
    Avx512 = 2,
}

/// One token per row of `logits` (B, V) f32 drawn from softmax(logits / temperature) at the
/// uniforms `u` (B) f64 (inverse-CDF: the same token as `generate::draw` at the same uniform, up
/// to rounding at the boundaries), with its log-prob under that
/// softmax and the softmax's entropy: (tokens (B) int64, log-probs (B), entropies (B)). One pass
/// per row with no (B, V) temporaries. CPU only.
pub fn sample_logits(logits: &Tensor, temperature: f64, u: &Tensor, build: KernelBuild) -> Result<(Tensor, Tensor, Tensor), String> {
    let (mut t, mut l, mut e) = (std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the inputs are live for the call; on success the C side hands over three new tensors.
    call(|er, n| unsafe { r2m_sample_logits(ptr(logits), temperature, ptr(u), build as i32, &mut t, &mut l, &mut e, er, n) })?;
    // SAFETY: heap `at::Tensor`s we now own.
    Ok(unsafe { (Tensor::from_ptr(t), Tensor::from_ptr(l), Tensor::from_ptr(e)) })
}

/// Whether generation at batch 1 multiplies by the weights with [`matvec`] rather than libtorch's
/// product (MKL's gemv) on this CPU: where it is measured faster (AMD CPUs with AVX2 or AVX-512;
/// docs/benchmarks.md). `R2M_MATVEC=r2m` or `=mkl` chooses either way.
pub fn matvec_preferred() -> bool {
    // SAFETY: no arguments; reads the environment and the CPU's identification.
    unsafe { r2m_matvec_preferred() == 1 }
}

/// Whether this CPU runs r2m's decode GEMM ([`gemm`]): x86-64 with AVX-512F.
pub fn gemm_available() -> bool {
    // SAFETY: no arguments; reads the CPU's identification.
    unsafe { r2m_gemm_available() == 1 }
}

/// Whether generation decodes batches of [`crate::model::packed::MIN_BATCH`] rows or more with
/// [`gemm`] rather than MKL's packed GEMM on this CPU: where it is measured faster (Intel CPUs with
/// AVX-512; docs/benchmarks.md). `R2M_GEMM=r2m` or `=mkl` chooses either way (r2m only where
/// [`gemm_available`]).
pub fn gemm_preferred() -> bool {
    // SAFETY: no arguments; reads the environment and the CPU's identification.
    unsafe { r2m_gemm_preferred() == 1 }
}

/// `w` (N, K) f32 on the CPU in [`gemm`]'s layout: (ceil(N / 48), K, 48), panels of 48 output
/// columns, zero past N.
pub fn gemm_pack(w: &Tensor) -> Result<Tensor, String> {
    // SAFETY: `w` is live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_gemm_pack(ptr(w), out, e, l) })
}

/// `x W^T + bias` with `packed = gemm_pack(W)` and `n` W's row count: `x` (..., K) f32 on the CPU,
/// any row count; returns (rows, N). r2m's decode GEMM (csrc/gemm.cpp): each value is one chain of
/// fused multiply-adds over K in order, then + bias, so it does not depend on the thread count or
/// on the other rows; equal to `at::linear`'s to f32 rounding. AVX-512 only ([`gemm_available`]).
/// No autograd: call it under no_grad only.
pub fn gemm(x: &Tensor, packed: &Tensor, n: i64, bias: Option<&Tensor>) -> Result<Tensor, String> {
    Ok(gemm_many(x, &[(packed, n, bias)], &[])?.remove(0))
}

/// [`gemm`] of the same `x` by several packed weights `(packed, n, bias)` (q, k and v; gate and
/// up) in one parallel region: one (rows, N_j) result each, each equal to what [`gemm`] gives for
/// its weight alone. `next`: packed weights the caller multiplies next, whose first panels the
/// threads prefetch while they finish this call (a hint: the values do not depend on it).
pub fn gemm_many(x: &Tensor, weights: &[(&Tensor, i64, Option<&Tensor>)], next: &[&Tensor]) -> Result<Vec<Tensor>, String> {
    let packed: Vec<_> = weights.iter().map(|(p, _, _)| ptr(p)).collect();
    let ns: Vec<i64> = weights.iter().map(|(_, n, _)| *n).collect();
    let biases: Vec<_> = weights.iter().map(|(_, _, b)| b.map_or(std::ptr::null_mut(), ptr)).collect();
    let next = ptrs(next);
    let count = i32::try_from(weights.len()).map_err(|_| "gemm: too many weights".to_string())?;
    let next_count = i32::try_from(next.len()).map_err(|_| "gemm: too many next weights".to_string())?;
    let mut out = vec![std::ptr::null_mut::<C_tensor>(); weights.len()];
    // SAFETY: the inputs are live for the call; `packed`, `ns` and `biases` hold `count` entries,
    // `next` holds `next_count`; a null bias means none; on success the C side stores `count` new
    // `at::Tensor`s in `out`.
    call(|e, l| unsafe {
        r2m_gemm(ptr(x), packed.as_ptr(), ns.as_ptr(), biases.as_ptr(), count, next.as_ptr(), next_count, out.as_mut_ptr(), e, l)
    })?;
    // SAFETY: heap `at::Tensor`s we now own.
    Ok(out.into_iter().map(|t| unsafe { Tensor::from_ptr(t) }).collect())
}

/// `x w^T + bias` for one input row `x` (K elements, any shape), `w` (N, K), `bias` (N): (N),
/// all f32 on the CPU. r2m's streaming kernel (csrc/decode.cpp): the weights are read once, in
/// order, one row after another; each value is summed in a fixed order, so it does not depend on
/// the thread count or the build. No autograd: call it under no_grad only.
pub fn matvec(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, build: KernelBuild) -> Result<Tensor, String> {
    matvec_many(x, &[(w, bias)], build)
}

/// [`matvec`] of one input row by several weights `(w_j (N_j, K), bias_j)` in one parallel region
/// (q, k and v; gate and up): (N_0 + N_1 + ...), the products side by side, each value equal to
/// what [`matvec`] gives for its weight alone.
pub fn matvec_many(x: &Tensor, weights: &[(&Tensor, Option<&Tensor>)], build: KernelBuild) -> Result<Tensor, String> {
    let ws: Vec<_> = weights.iter().map(|(w, _)| ptr(w)).collect();
    let bs: Vec<_> = weights.iter().map(|(_, b)| b.map_or(std::ptr::null_mut(), ptr)).collect();
    let count = i32::try_from(ws.len()).map_err(|_| "matvec: too many weights".to_string())?;
    // SAFETY: the inputs are live for the call; `ws` and `bs` hold `count` pointers each, a null
    // bias means none; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_matvec(ptr(x), ws.as_ptr(), bs.as_ptr(), count, build as i32, out, e, l) })
}

/// One decode step's attention over the KV cache: `q` (B, nh, 1, hd), `k` and `v` (B, nkv, S, hd)
/// (views of a longer cache are fine: unit stride along hd), `valid` (B, 1, 1, S) bool, true =
/// attend; all f32 on the CPU, nh a multiple of nkv. Returns softmax(scale q k^T) v as
/// (B, 1, nh * hd), the heads side by side (the output projection's input). r2m's kernel
/// (csrc/decode.cpp): each cached key and value row is read once for all the query heads that
/// share it; values equal SDPA's to f32 rounding and do not depend on the thread count or the
/// build. No autograd: call it under no_grad only.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, valid: &Tensor, scale: f64, build: KernelBuild) -> Result<Tensor, String> {
    // SAFETY: the inputs are live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_decode_attention(ptr(q), ptr(k), ptr(v), ptr(valid), scale, build as i32, out, e, l) })
}

/// RMS norm over the last dimension of `x` with the weight `w`: `(x * r) * (w + 1)` if `add_one`
/// (Gemma's) else `(x * r) * w`, r = 1 / sqrt(mean(x^2) + eps) per row, all f32 on the CPU: the
/// decoder's `Norm` in one pass per row (csrc/decode.cpp). Values equal ATen's ops to f32
/// rounding (the sum of squares runs in another order) and do not depend on the thread count or
/// the build. No autograd: call it under no_grad only.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, add_one: bool, build: KernelBuild) -> Result<Tensor, String> {
    // SAFETY: the inputs are live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_rms_norm(ptr(x), ptr(w), eps, i32::from(add_one), build as i32, out, e, l) })
}

/// RoPE on `x` (B, h, T, hd) with `cos` and `sin` (B, 1, T, rot): `x cos + rotate_half(x) sin`
/// over the first rot dims, the rest unchanged, f32 on the CPU, in one pass (csrc/decode.cpp).
/// The same bits as those tensor ops (`layers::apply_rope`). No autograd: under no_grad only.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, build: KernelBuild) -> Result<Tensor, String> {
    // SAFETY: the inputs are live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_rope(ptr(x), ptr(cos), ptr(sin), build as i32, out, e, l) })
}

/// The gated MLP's `silu(g) * u`, f32 on the CPU, in one pass (csrc/decode.cpp): `g` and `u` of
/// one shape, each rows with one row stride (the halves of a fused projection are fine). Values
/// equal ATen's to f32 rounding. No autograd: under no_grad only.
pub fn silu_mul(g: &Tensor, u: &Tensor, build: KernelBuild) -> Result<Tensor, String> {
    // SAFETY: the inputs are live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_silu_mul(ptr(g), ptr(u), build as i32, out, e, l) })
}

/// MKL's packed form of a linear weight `w` (out, in) for inputs of exactly `m` rows
/// (`torch.ops.mkl._mkl_reorder_linear_weight`). CPU, f32; an error where libtorch has no MKL.
pub fn mkl_pack(w: &Tensor, m: i64) -> Result<Tensor, String> {
    // SAFETY: `w` is live for the call; on success the C side hands over a new `at::Tensor`.
    call_tensor(|out, e, l| unsafe { r2m_mkl_pack(ptr(w), m, out, e, l) })
}

/// `x W^T + b` with `packed = mkl_pack(w, m)` (`torch.ops.mkl._mkl_linear`); `x` (..., in) with
/// `m` rows in all. No autograd: call it under no_grad only.
pub fn mkl_linear(x: &Tensor, packed: &Tensor, w: &Tensor, bias: Option<&Tensor>, m: i64) -> Result<Tensor, String> {
    let b = bias.map_or(std::ptr::null_mut(), ptr);
    // SAFETY: as in `mkl_pack`; a null bias means none.
    call_tensor(|out, e, l| unsafe { r2m_mkl_linear(ptr(x), ptr(packed), ptr(w), b, m, out, e, l) })
}

/// A block of layers for [`checkpoint`]: what it computes from its input. It owns what it reads
/// (shallow copies of weights share their storage and gradients), since the backward pass runs it
/// again after the caller's forward has returned, possibly on autograd's device thread.
pub type Block = Box<dyn Fn(&Tensor) -> Tensor + Send>;

/// How many times a checkpointed block has run (forward and recomputation), for tests.
pub static BLOCK_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn block_call(ctx: *mut c_void, x: *mut C_tensor, err: *mut c_char, err_len: usize) -> *mut C_tensor {
    BLOCK_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: `ctx` is the `Box<Block>` leaked by `checkpoint`, alive until `block_drop`; `x` is a
    // new heap `at::Tensor` handed over to us.
    let (f, x) = unsafe { (&*(ctx as *const Block), Tensor::from_ptr(x)) };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&x))) {
        Ok(y) => {
            let p = y.as_ptr() as *mut C_tensor;
            std::mem::forget(y); // the C++ side takes the at::Tensor and deletes it
            p
        }
        Err(payload) => {
            let msg = crate::error::panic_message(payload.as_ref(), "panic in a checkpointed block");
            let bytes = msg.as_bytes();
            let n = bytes.len().min(err_len.saturating_sub(1));
            // SAFETY: `err` has `err_len` bytes; we write n < err_len and a NUL.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, err, n);
                *err.add(n) = 0;
            }
            std::ptr::null_mut()
        }
    }
}

extern "C" fn block_drop(ctx: *mut c_void) {
    // SAFETY: called once, by the C++ holder's destructor, on the pointer `checkpoint` leaked.
    drop(unsafe { Box::from_raw(ctx as *mut Block) });
}

/// `f(x)` with activation checkpointing (`torch.utils.checkpoint`, reentrant): the forward keeps
/// only `x`; backward runs `f` again with grad (under the autocast state of the forward) and
/// back-propagates through it into `x` and `params`, the tensors of `f` that require grad.
/// Gradients equal those of plain `f(x)`; the cost is one more forward of `f` in backward.
pub fn checkpoint(x: &Tensor, params: &[&Tensor], f: Block) -> Result<Tensor, String> {
    let p = ptrs(params);
    let ctx = Box::into_raw(Box::new(f)) as *mut c_void;
    // SAFETY: the C++ side takes ownership of `ctx` in every case (frees it through block_drop);
    // tensors are live for the call; on success `out` is a new at::Tensor we own.
    call_tensor(|out, e, l| unsafe { r2m_checkpoint(ptr(x), p.as_ptr(), p.len() as i64, ctx, block_call, block_drop, out, e, l) })
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { r2m_grad_enabled() != 0 }
}

#[cfg(test)]
mod tests {
    use super::KernelBuild;
    use tch::{Device, Kind, Tensor};

    const BUILDS: [KernelBuild; 3] = [KernelBuild::Baseline, KernelBuild::Avx2, KernelBuild::Avx512];

    /// The kernel's draw equals the tensor path's (softmax at the temperature, f64 cumulative sum,
    /// search: `generate::draw`) at the same uniforms; its log-prob and entropy match
    /// log_softmax's; zero-weight (-inf) tokens are never drawn; a NaN row gives the last token and
    /// NaN, as the tensor path would.
    #[test]
    fn sample_logits_equals_the_cumulative_search() {
        let _g = tch::no_grad_guard();
        let dead = Tensor::from_slice(&[0i64, 1, 255, 256, 999]);
        tch::manual_seed(11);
        for build in BUILDS {
            for round in 0..5 {
                // 48 rows over 1000 tokens (not a multiple of the block or vector width), peaked
                // and flat rows, some tokens at -inf.
                let scale = Tensor::linspace(0.1, 12.0, 48, (Kind::Float, Device::Cpu)).unsqueeze(1);
                let logits = (Tensor::randn([48, 1000], (Kind::Float, Device::Cpu)) * scale).index_fill(1, &dead, f64::NEG_INFINITY);
                let temp = [0.7, 1.0, 1.3, 0.7, 0.25][round];
                let u = Tensor::rand([48], (Kind::Double, Device::Cpu));
                let u = if round == 0 { u.full_like(1.0 - 1e-16) } else { u };
                let (tok, lp, ent) = super::sample_logits(&logits, temp, &u, build).unwrap();
                let logp = (&logits / temp).log_softmax(-1, Kind::Float);
                let probs = logp.exp();
                let cdf = probs.cumsum(-1, Kind::Double);
                let cdf = &cdf / cdf.narrow(1, 999, 1);
                let want = u.unsqueeze(1).searchsorted(&cdf, false, true, "right", None::<Tensor>).squeeze_dim(-1).clamp_max(999);
                if round == 0 {
                    // u at the top of [0, 1): within rounding of the total either search may stop
                    // at any of the last tokens with weight; each must have weight.
                    assert_eq!(probs.gather(1, &tok.unsqueeze(1), false).le(0.0).any().int64_value(&[]), 0, "{build:?}");
                } else {
                    assert!(tok.equal(&want), "{build:?}, T {temp}: tokens {tok} vs {want}");
                }
                assert_eq!(tok.unsqueeze(1).eq_tensor(&dead.unsqueeze(0)).any().int64_value(&[]), 0, "a -inf token drawn");
                let dl = (&lp - logp.gather(1, &tok.unsqueeze(1), false).squeeze_dim(1)).abs().max().double_value(&[]);
                assert!(dl < 1e-5, "{build:?}: log-prob off by {dl}");
                let h = -(&probs * logp.nan_to_num(0.0, None, None)).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
                let dh = (&ent - h).abs().max().double_value(&[]);
                assert!(dh < 1e-5, "{build:?}: entropy off by {dh}");
            }
            let nan = Tensor::randn([2, 37], (Kind::Float, Device::Cpu));
            let _ = nan.get(1).get(20).fill_(f64::NAN);
            let (tok, lp, ent) = super::sample_logits(&nan, 1.0, &Tensor::from_slice(&[0.5f64, 0.5]), build).unwrap();
            assert_eq!(tok.int64_value(&[1]), 36);
            assert!(lp.double_value(&[1]).is_nan() && ent.double_value(&[1]).is_nan());
            assert!(lp.double_value(&[0]).is_finite() && ent.double_value(&[0]).is_finite());
        }
    }

    /// The features libtorch reports agree with what Rust's own CPU detection sees.
    #[test]
    fn cpu_isa_agrees_with_the_cpu() {
        let (level, features) = super::cpu_isa().unwrap();
        assert!(["DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256", "NEON"].iter().any(|l| level.starts_with(l)), "{level}");
        assert!(features.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats: {features:?}");
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(features.iter().any(|f| f == "avx2"), std::is_x86_feature_detected!("avx2"), "{features:?}");
            assert_eq!(features.iter().any(|f| f == "avx512_f"), std::is_x86_feature_detected!("avx512f"), "{features:?}");
            if !std::is_x86_feature_detected!("avx2") {
                assert_eq!(level, "DEFAULT");
            }
        }
    }

    /// The matrix-vector kernel equals the product in f64 to f32 rounding, with and without a
    /// bias, over shapes whose K is not a multiple of the vector width and whose N is not a
    /// multiple of the rows per pass. Every build gives the same bits, and each row's value equals
    /// that row multiplied alone: it does not depend on which pass or thread computes it.
    #[test]
    fn matvec_equals_the_product_in_every_build_and_row_by_row() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(5);
        for (n, k) in [(1, 1), (3, 15), (4, 16), (7, 40), (61, 97), (9, 200), (1000, 576), (130, 1536)] {
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            let x = Tensor::randn([1, 1, k], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([n], (Kind::Float, Device::Cpu));
            for b in [None, Some(&bias)] {
                let exact =
                    x.to_kind(Kind::Double).reshape([1, k]).linear(&w.to_kind(Kind::Double), b.map(|b| b.to_kind(Kind::Double)).as_ref());
                // Each term's rounding, bounded by the sum of the terms' magnitudes.
                let scale = x.abs().to_kind(Kind::Double).reshape([1, k]).matmul(&w.abs().to_kind(Kind::Double).tr()) + 1.0;
                let first = super::matvec(&x, &w, b, KernelBuild::Baseline).unwrap();
                assert_eq!(first.size(), [n]);
                for build in BUILDS {
                    let y = super::matvec(&x, &w, b, build).unwrap();
                    let err = (y.to_kind(Kind::Double).reshape([1, n]) - &exact).abs() / &scale;
                    let worst = err.max().double_value(&[]);
                    assert!(worst < f64::from(k as i32 + 2) * 6e-8, "({n}, {k}) {build:?}: {worst}");
                    assert!(y.equal(&first), "({n}, {k}): {build:?} differs from the baseline build");
                    for i in (0..n).step_by((n as usize).div_ceil(40)) {
                        let alone = super::matvec(&x, &w.narrow(0, i, 1), b.map(|b| b.narrow(0, i, 1)).as_ref(), build).unwrap();
                        assert!(alone.equal(&y.narrow(0, i, 1)), "({n}, {k}) {build:?}: row {i} alone differs");
                    }
                }
            }
        }
        let w = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let err = super::matvec(&Tensor::zeros([2, 8], (Kind::Float, Device::Cpu)), &w, None, KernelBuild::Best).unwrap_err();
        assert!(err.contains("one row of 8"), "{err}");
        let err = super::matvec(&Tensor::zeros([8], (Kind::Double, Device::Cpu)), &w, None, KernelBuild::Best).unwrap_err();
        assert!(err.contains("f32"), "{err}");
    }

    /// Several weights in one call give, side by side, the bits each gives alone, biases or not;
    /// a weight whose K is not the input's is refused by index.
    #[test]
    fn matvec_many_equals_each_weight_alone() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(6);
        let k = 97;
        let x = Tensor::randn([1, 1, k], (Kind::Float, Device::Cpu));
        let ws: Vec<Tensor> = [7, 64, 130, 1].iter().map(|&n| Tensor::randn([n, k], (Kind::Float, Device::Cpu))).collect();
        let bs: Vec<Option<Tensor>> = [true, false, true, false]
            .iter()
            .zip(&ws)
            .map(|(&has, w)| has.then(|| Tensor::randn([w.size()[0]], (Kind::Float, Device::Cpu))))
            .collect();
        let pairs: Vec<(&Tensor, Option<&Tensor>)> = ws.iter().zip(&bs).map(|(w, b)| (w, b.as_ref())).collect();
        for build in BUILDS {
            let y = super::matvec_many(&x, &pairs, build).unwrap();
            let alone: Vec<Tensor> = pairs.iter().map(|(w, b)| super::matvec(&x, w, *b, build).unwrap()).collect();
            assert!(y.equal(&Tensor::cat(&alone, 0)), "{build:?}: the joint call differs from the weights alone");
        }
        let odd = Tensor::zeros([4, 96], (Kind::Float, Device::Cpu));
        let err = super::matvec_many(&x, &[(&ws[0], None), (&odd, None)], KernelBuild::Best).unwrap_err();
        assert!(err.contains("weight 1"), "{err}");
    }

    /// The RMS norm kernel equals the norm computed in f64 to f32 rounding, plain and with Gemma's
    /// (1 + w), over widths that are not a multiple of the vector width; every build gives the
    /// same bits and each row equals that row normed alone.
    #[test]
    fn rms_norm_equals_the_norm_in_f64_in_every_build() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(8);
        for (rows, d) in [(1, 576), (64, 576), (7, 40), (3, 1), (5, 2048)] {
            let x = Tensor::randn([rows, 1, d], (Kind::Float, Device::Cpu)) * 3.0;
            let w = Tensor::randn([d], (Kind::Float, Device::Cpu));
            for add_one in [false, true] {
                let xd = x.to_kind(Kind::Double);
                let r = (xd.square().mean_dim(-1, true, Kind::Double) + 1e-5).rsqrt();
                let exact = xd * r * (w.to_kind(Kind::Double) + if add_one { 1.0 } else { 0.0 });
                let first = super::rms_norm(&x, &w, 1e-5, add_one, KernelBuild::Baseline).unwrap();
                assert_eq!(first.size(), x.size());
                let worst = ((first.to_kind(Kind::Double) - &exact).abs() / (exact.abs() + 1e-3)).max().double_value(&[]);
                assert!(worst < 1e-5, "({rows}, {d}) add_one {add_one}: off by {worst}");
                for build in BUILDS {
                    let y = super::rms_norm(&x, &w, 1e-5, add_one, build).unwrap();
                    assert!(y.equal(&first), "({rows}, {d}): {build:?} differs from the baseline build");
                    let i = rows - 1;
                    let alone = super::rms_norm(&x.narrow(0, i, 1), &w, 1e-5, add_one, build).unwrap();
                    assert!(alone.equal(&y.narrow(0, i, 1)), "({rows}, {d}) {build:?}: row {i} alone differs");
                }
            }
        }
        let err = super::rms_norm(
            &Tensor::zeros([2, 8], (Kind::Float, Device::Cpu)),
            &Tensor::ones([7], (Kind::Float, Device::Cpu)),
            1e-5,
            false,
            KernelBuild::Best,
        )
        .unwrap_err();
        assert!(err.contains("8 values"), "{err}");
    }

    /// RoPE gives the bits of the tensor ops (`layers::apply_rope`: `x cos + rotate_half(x) sin`)
    /// for full and partial rotation, one and several tokens, strided inputs (heads split from a
    /// projection), in every build; `silu_mul` equals silu(g) u in f64 to f32 rounding, on
    /// contiguous inputs and on the two halves of a fused projection, the same bits in every build.
    #[test]
    fn rope_and_silu_mul_equal_the_tensor_ops() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        for (b, h, t, hd, rot) in [(2, 3, 1, 64, 64), (64, 9, 1, 64, 64), (2, 4, 5, 40, 40), (3, 2, 1, 48, 16), (1, 1, 3, 128, 96)] {
            // As attention splits heads: (B, T, h*hd) viewed as (B, T, h, hd), transposed.
            let x = Tensor::randn([b, t, h * hd], opts).view([b, t, h, hd]).transpose(1, 2);
            let ang = Tensor::randn([b, 1, t, rot / 2], opts) * 3.0;
            let ang = Tensor::cat(&[&ang, &ang], -1);
            let (cos, sin) = (ang.cos(), ang.sin());
            let want = crate::model::layers::apply_rope(&x, &cos, &sin);
            for build in BUILDS {
                let y = super::rope(&x, &cos, &sin, build).unwrap();
                assert!(y.equal(&want), "({b}, {h}, {t}, {hd}, {rot}) {build:?}: differs from the tensor ops");
                assert!(y.is_contiguous());
            }
        }
        let err = super::rope(
            &Tensor::zeros([1, 2, 1, 8], opts),
            &Tensor::zeros([1, 1, 2, 8], opts),
            &Tensor::zeros([1, 1, 2, 8], opts),
            KernelBuild::Best,
        )
        .unwrap_err();
        assert!(err.contains("(B, 1, T, rot)"), "{err}");
        for (rows, n) in [(1, 1536), (64, 1536), (5, 37)] {
            let gu = Tensor::randn([rows, 1, 2 * n], opts) * 4.0;
            let (g, u) = (gu.narrow(-1, 0, n), gu.narrow(-1, n, n));
            let exact = g.to_kind(Kind::Double).silu() * u.to_kind(Kind::Double);
            let first = super::silu_mul(&g, &u, KernelBuild::Baseline).unwrap();
            assert_eq!(first.size(), [rows, 1, n]);
            let worst = ((first.to_kind(Kind::Double) - &exact).abs() / (exact.abs() + 1e-6)).max().double_value(&[]);
            assert!(worst < 1e-5, "({rows}, {n}): off by {worst}");
            for build in BUILDS {
                let (y, yc) = (super::silu_mul(&g, &u, build).unwrap(), super::silu_mul(&g.contiguous(), &u.contiguous(), build).unwrap());
                assert!(y.equal(&first) && yc.equal(&first), "({rows}, {n}): {build:?} differs from the baseline build");
            }
        }
        let huge = Tensor::from_slice(&[-100.0f32, -88.0, 0.0, 30.0, 100.0]);
        let y = super::silu_mul(&huge, &huge.ones_like(), KernelBuild::Best).unwrap();
        assert!(y.isfinite().all().int64_value(&[]) == 1, "{y}");
    }

    /// The decode GEMM equals the product in f64 to f32 rounding, with and without a bias, over
    /// row counts that are not a multiple of its 8-row tile, N not a multiple of its 48-column panel
    /// and (..., K) inputs; each row equals that row multiplied alone (the value does not depend
    /// on the other rows or the threads). Wrong shapes are errors that say what is wrong.
    #[test]
    fn gemm_equals_the_product_in_f64_row_by_row() {
        if !super::gemm_available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let _g = tch::no_grad_guard();
        tch::manual_seed(9);
        let opts = (Kind::Float, Device::Cpu);
        for (m, n, k) in [(1, 1, 1), (8, 48, 16), (13, 50, 37), (64, 576, 576), (64, 192, 1536), (9, 1000, 64), (33, 97, 200)] {
            let w = Tensor::randn([n, k], opts);
            let bias = Tensor::randn([n], opts);
            let x = Tensor::randn([m, 1, k], opts);
            let packed = super::gemm_pack(&w).unwrap();
            assert_eq!(packed.size(), [(n + 47) / 48, k, 48]);
            for b in [None, Some(&bias)] {
                let y = super::gemm(&x, &packed, n, b).unwrap();
                assert_eq!(y.size(), [m, n]);
                let mut exact = x.reshape([m, k]).to_kind(Kind::Double).matmul(&w.to_kind(Kind::Double).tr());
                if let Some(b) = b {
                    exact += b.to_kind(Kind::Double);
                }
                let worst = (y.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
                assert!(worst < 1e-6 * (k as f64).sqrt() * 8.0, "({m}, {n}, {k}): off by {worst}");
                for i in [0, m / 2, m - 1] {
                    let alone = super::gemm(&x.narrow(0, i, 1), &packed, n, b).unwrap();
                    assert!(alone.equal(&y.narrow(0, i, 1)), "({m}, {n}, {k}): row {i} alone differs");
                }
            }
        }
        let packed = super::gemm_pack(&Tensor::randn([50, 16], opts)).unwrap();
        let err = super::gemm(&Tensor::randn([4, 15], opts), &packed, 50, None).unwrap_err();
        assert!(err.contains("last dim is 15") && err.contains("K is 16"), "{err}");
        // Many threads over few panels split the rows among them: the same values.
        let (w, x) = (Tensor::randn([192, 64], opts), Tensor::randn([64, 64], opts));
        let p7 = super::gemm_pack(&w).unwrap();
        let threads = tch::get_num_threads();
        tch::set_num_threads(7);
        let many = super::gemm(&x, &p7, 192, None);
        tch::set_num_threads(threads);
        assert!(many.unwrap().equal(&super::gemm(&x, &p7, 192, None).unwrap()), "7 threads differ");
        // Several weights in one call, with any hint of what comes next: each equals it alone.
        let (wa, wb) = (Tensor::randn([96, 40], opts), Tensor::randn([50, 40], opts));
        let (pa, pb) = (super::gemm_pack(&wa).unwrap(), super::gemm_pack(&wb).unwrap());
        let x = Tensor::randn([20, 40], opts);
        let bias = Tensor::randn([50], opts);
        let next = super::gemm_pack(&Tensor::randn([200, 64], opts)).unwrap();
        for hint in [vec![], vec![&next], vec![&pa, &next]] {
            let ys = super::gemm_many(&x, &[(&pa, 96, None), (&pb, 50, Some(&bias))], &hint).unwrap();
            assert!(ys[0].equal(&super::gemm(&x, &pa, 96, None).unwrap()));
            assert!(ys[1].equal(&super::gemm(&x, &pb, 50, Some(&bias)).unwrap()));
        }
        let err = super::gemm(&Tensor::randn([4, 16], opts), &packed, 97, None).unwrap_err();
        assert!(err.contains("N = 97"), "{err}");
        let err = super::gemm(&Tensor::randn([4, 16], opts), &packed, 50, Some(&Tensor::zeros([49], opts))).unwrap_err();
        assert!(err.contains("must hold 50"), "{err}");
    }

    /// Decode attention equals softmax(scale q k^T) v computed in f64 with each key-value head
    /// repeated for its query heads, over views of a longer cache and masks with holes (left
    /// padding), for GQA, MHA and MQA and head sizes that are not a multiple of the vector width.
    /// Every build gives the same bits; each batch row equals that row attended alone; a row with
    /// no slot to attend is NaN, as softmax over nothing.
    #[test]
    fn decode_attention_equals_attention_in_f64_in_every_build() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        for (b, nh, nkv, hd, s) in [(3, 6, 2, 16, 9), (2, 9, 3, 64, 75), (2, 4, 4, 40, 33), (1, 8, 1, 128, 130), (4, 2, 1, 7, 1)] {
            let q = Tensor::randn([b, nh, 1, hd], opts) * 2.0;
            let cache_k = Tensor::randn([b, nkv, s + 5, hd], opts);
            let cache_v = Tensor::randn([b, nkv, s + 5, hd], opts);
            let (k, v) = (cache_k.narrow(2, 0, s), cache_v.narrow(2, 0, s));
            // Row i has i padded slots at the start; the query's own (last) slot is always valid.
            let slots = Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            let pad = Tensor::arange(b, (Kind::Int64, Device::Cpu)).unsqueeze(1).clamp_max(s - 1);
            let valid = slots.ge_tensor(&pad).unsqueeze(1).unsqueeze(1);
            let scale = 1.0 / (hd as f64).sqrt() * 1.25;
            let rep = nh / nkv;
            let (kd, vd) = (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None));
            let scores = q.to_kind(Kind::Double).matmul(&kd.to_kind(Kind::Double).transpose(-2, -1)) * scale;
            let scores = scores.masked_fill(&valid.logical_not(), f64::NEG_INFINITY);
            let exact = scores.softmax(-1, Kind::Double).matmul(&vd.to_kind(Kind::Double)); // (B, nh, 1, hd)
            let exact = exact.transpose(1, 2).reshape([b, 1, nh * hd]);
            let first = super::decode_attention(&q, &k, &v, &valid, scale, KernelBuild::Baseline).unwrap();
            assert_eq!(first.size(), [b, 1, nh * hd]);
            let worst = (first.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
            assert!(worst < 2e-5, "({b}, {nh}, {nkv}, {hd}, {s}): off by {worst}");
            for build in BUILDS {
                let y = super::decode_attention(&q, &k, &v, &valid, scale, build).unwrap();
                assert!(y.equal(&first), "({b}, {nh}, {nkv}, {hd}, {s}): {build:?} differs from the baseline build");
                for i in 0..b {
                    let row = |t: &Tensor| t.narrow(0, i, 1);
                    let alone = super::decode_attention(&row(&q), &row(&k), &row(&v), &row(&valid), scale, build).unwrap();
                    assert!(alone.equal(&row(&y)), "({b}, {nh}, {nkv}, {hd}, {s}) {build:?}: row {i} alone differs");
                }
            }
        }
        let q = Tensor::randn([1, 2, 1, 16], opts);
        let kv = Tensor::randn([1, 1, 4, 16], opts);
        let none = Tensor::zeros([1, 1, 1, 4], (Kind::Bool, Device::Cpu));
        let y = super::decode_attention(&q, &kv, &kv, &none, 0.25, KernelBuild::Best).unwrap();
        assert_eq!(y.isnan().all().int64_value(&[]), 1, "{y}");
        let err = super::decode_attention(&q, &kv, &kv, &none.narrow(3, 0, 3), 0.25, KernelBuild::Best).unwrap_err();
        assert!(err.contains("(B, 1, 1, S)"), "{err}");
        let err = super::decode_attention(&Tensor::randn([1, 3, 1, 16], opts), &kv, &kv.narrow(1, 0, 1), &none, 0.25, KernelBuild::Best);
        assert!(err.is_ok(), "MQA with 3 query heads: {err:?}");
        let err = super::decode_attention(
            &Tensor::randn([1, 3, 1, 16], opts),
            &kv.repeat([1, 2, 1, 1]),
            &kv.repeat([1, 2, 1, 1]),
            &none,
            0.25,
            KernelBuild::Best,
        )
        .unwrap_err();
        assert!(err.contains("decode_attention"), "{err}");
    }
}
