//! libtorch ops that tch does not bind, compiled from csrc/fused.cpp by build.rs: ops over tensor
//! lists (tch's generator skips them: the fused AdamW kernel), `.grad = None`, and ops registered
//! only through the dispatcher (MKL weight packing), and activation checkpointing (a custom
//! autograd function that calls back into Rust). Safe wrappers; every C++ exception comes back
//! as `Err(message)`.
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

/// MKL's packed form of a linear weight `w` (out, in) for inputs of exactly `m` rows
/// (`torch.ops.mkl._mkl_reorder_linear_weight`). CPU, f32; an error where libtorch has no MKL.
pub fn mkl_pack(w: &Tensor, m: i64) -> Result<Tensor, String> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: `w` is live for the call; on success the C side hands over a new `at::Tensor`.
    call(|e, l| unsafe { r2m_mkl_pack(ptr(w), m, &mut out, e, l) })?;
    // SAFETY: `out` is a heap `at::Tensor` we now own (tch frees it on drop).
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// `x W^T + b` with `packed = mkl_pack(w, m)` (`torch.ops.mkl._mkl_linear`); `x` (..., in) with
/// `m` rows in all. No autograd: call it under no_grad only.
pub fn mkl_linear(x: &Tensor, packed: &Tensor, w: &Tensor, bias: Option<&Tensor>, m: i64) -> Result<Tensor, String> {
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let b = bias.map_or(std::ptr::null_mut(), ptr);
    // SAFETY: as in `mkl_pack`; a null bias means none.
    call(|e, l| unsafe { r2m_mkl_linear(ptr(x), ptr(packed), ptr(w), b, m, &mut out, e, l) })?;
    // SAFETY: as in `mkl_pack`.
    Ok(unsafe { Tensor::from_ptr(out) })
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
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the C++ side takes ownership of `ctx` in every case (frees it through block_drop);
    // tensors are live for the call; on success `out` is a new at::Tensor we own.
    call(|e, l| unsafe { r2m_checkpoint(ptr(x), p.as_ptr(), p.len() as i64, ctx, block_call, block_drop, &mut out, e, l) })?;
    // SAFETY: on success `out` is a new heap at::Tensor we now own.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Whether autograd records operations on this thread (`torch.is_grad_enabled()`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag.
    unsafe { r2m_grad_enabled() != 0 }
}
