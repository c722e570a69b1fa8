//! glibc's malloc, set for tensor work: freed memory stays in the process for the next tensor.
//!
//! Every ATen op returns a fresh tensor, and a decode step makes hundreds of them, many of a few
//! hundred KB. With glibc's defaults, blocks that large are mapped from the kernel on each
//! allocation and unmapped when freed (or trimmed from the top of the heap), so every new tensor
//! starts on fresh pages and pays a page fault per 4 KB before its first write; at batch 64 that
//! cost more than the ops' arithmetic (norms, RoPE, the MLP's activation: docs/benchmarks.md).
//! [`keep_freed_memory`] raises the mapping threshold to 32 MiB and the trim threshold to
//! 256 MiB, so blocks below 32 MiB come from the heap and freed ones are reused. It changes no
//! value, only where memory comes from; the cost is up to 256 MiB of freed memory that the
//! process keeps instead of returning. r2m's executables call it at start. It leaves malloc as
//! it is under `R2M_MALLOC=default`, and where the user tuned malloc already (a `glibc.malloc.`
//! entry in `GLIBC_TUNABLES`, or one of glibc's `MALLOC_*_` variables).

use std::sync::atomic::{AtomicBool, Ordering};

/// The mapping threshold: allocations at least this large are still mapped (and unmapped when freed).
pub const MMAP_THRESHOLD: i32 = 32 << 20;
/// Freed memory at the top of the heap is returned to the kernel past this much.
pub const TRIM_THRESHOLD: i32 = 256 << 20;

static KEPT: AtomicBool = AtomicBool::new(false);

/// Sets glibc's malloc to keep freed memory (see the module's doc); returns whether it did:
/// false under `R2M_MALLOC=default`, where the user tuned malloc already, and where the C
/// library is not glibc.
pub fn keep_freed_memory() -> bool {
    if std::env::var("R2M_MALLOC").is_ok_and(|v| v == "default") || user_tuned(std::env::vars()) {
        return false;
    }
    let kept = set();
    KEPT.store(kept, Ordering::Relaxed);
    kept
}

/// Whether the environment tunes glibc's malloc itself.
fn user_tuned(vars: impl Iterator<Item = (String, String)>) -> bool {
    const GLIBC_VARS: [&str; 5] =
        ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX"];
    vars.into_iter().any(|(k, v)| GLIBC_VARS.contains(&k.as_str()) || (k == "GLIBC_TUNABLES" && v.contains("glibc.malloc.")))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set() -> bool {
    // SAFETY: mallopt only changes the allocator's parameters; it is safe to call at any time.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set() -> bool {
    false
}

/// What [`keep_freed_memory`] set in this process, for reports.
pub fn describe() -> &'static str {
    if KEPT.load(Ordering::Relaxed) {
        "malloc keeps freed memory (r2m's setting)"
    } else {
        "malloc as the environment sets it (the C library's defaults unless tuned)"
    }
}

#[cfg(test)]
mod tests {
    /// On glibc the settings are accepted (mallopt returns 1 for each); tensors made afterwards
    /// hold the same values as before.
    #[test]
    fn glibc_accepts_the_settings() {
        let a = tch::Tensor::arange(1000, (tch::Kind::Float, tch::Device::Cpu)).sin();
        let kept = super::set();
        assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
        let b = tch::Tensor::arange(1000, (tch::Kind::Float, tch::Device::Cpu)).sin();
        assert!(a.equal(&b));
    }

    /// A malloc setting the user made wins: glibc's variables and malloc tunables, not other ones.
    #[test]
    fn the_users_own_malloc_tuning_is_left_alone() {
        let env = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter();
        assert!(super::user_tuned(env(&[("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")])));
        assert!(super::user_tuned(env(&[("PATH", "/bin"), ("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(!super::user_tuned(env(&[("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F"), ("PATH", "/bin")])));
        assert!(!super::user_tuned(env(&[])));
    }
}
