//! `--device cpu|cuda|cuda:N|auto`. The binary does not link libtorch_cuda (a CPU-only torch
//! install lacks cuBLAS and the binary would not start there); asking for CUDA dlopens it, whose
//! static initialisers register the CUDA backend, as PyTorch's own import does (docs/building.md).
use crate::error::{Error, Result};
use tch::Device;

/// Loads libtorch_cuda.so once (found through the rpath or LD_LIBRARY_PATH): whether it loaded,
/// GPU or not.
pub fn load_cuda_library() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let c = std::ffi::CString::new("libtorch_cuda.so").expect("no NUL in a literal");
        // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        !h.is_null()
    })
}

/// Loads libtorch_cuda.so once ([`load_cuda_library`]). Returns whether CUDA is then usable.
pub fn load_cuda() -> bool {
    load_cuda_library() && tch::Cuda::is_available()
}

/// Hands the host heap's free pages back to the OS (glibc's `malloc_trim`). CPU tensors between
/// 128 KiB and glibc's dynamic mmap threshold (up to 32 MiB) come from the heap, and a mix of such
/// sizes that differs between phases (decoding, then the policy update) leaves freed holes that
/// glibc keeps: RSS then grows step after step with nothing live (docs/benchmarks.md, "R2M
/// overhead"). Called between the phases of an RL step; it costs milliseconds, and the pages are
/// faulted in again when reused. A no-op off glibc.
pub fn release_free_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// MemAvailable from /proc/meminfo, in bytes (Linux): what the OS can hand out without swapping.
pub fn available_host_memory() -> Option<i64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Free and total memory of GPU `index` in bytes (`cudaMemGetInfo`, the CUDA runtime's answer:
/// what other processes and this one's caching allocator hold counts as used). Found through the
/// libcudart that `load_cuda` brought in; None where it is not loaded or the call fails.
pub fn cuda_free_memory(index: usize) -> Option<(u64, u64)> {
    if !load_cuda() {
        return None;
    }
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let sym = |name: &str| {
        let c = std::ffi::CString::new(name).expect("no NUL in a literal");
        // SAFETY: dlsym over the global scope (libtorch_cuda and its libcudart were opened
        // RTLD_GLOBAL) with a valid C string.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    let (set, info) = (sym("cudaSetDevice")?, sym("cudaMemGetInfo")?);
    // SAFETY: both are the CUDA runtime's functions with these C signatures.
    let (set, info) =
        unsafe { (std::mem::transmute::<*mut libc::c_void, SetDevice>(set), std::mem::transmute::<*mut libc::c_void, MemGetInfo>(info)) };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: plain runtime calls; the out-pointers are live locals.
    let ok = unsafe { set(index as i32) == 0 && info(&mut free, &mut total) == 0 };
    ok.then_some((free as u64, total as u64))
}

/// Resolves a device name. `auto` (the CLI default) is CUDA when a GPU is usable, else CPU.
/// The machine a run ran on, in words: the CPU's model name, its logical cores, and the device
/// ("AMD EPYC, 2 cores, Cpu"); recorded in each grid run's `done.json`.
pub fn describe_host(device: Device) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores, {device:?}")
}

pub fn parse(name: &str) -> Result<Device> {
    parse_for(name, job_local_rank())
}

/// LOCAL_RANK when this process is one rank of a job of several (WORLD_SIZE > 1, as torchrun and
/// `--nproc` set them): the GPU that `cuda` and `auto` mean for it.
fn job_local_rank() -> Option<usize> {
    let world: usize = std::env::var("WORLD_SIZE").ok()?.parse().ok()?;
    (world > 1).then(|| std::env::var("LOCAL_RANK").ok()?.parse().ok()).flatten()
}

/// [`parse`] for a process that is the local rank `local` of a job (None: alone). `cuda` and
/// `auto` then mean GPU `local`, one GPU per rank as torchrun jobs pick theirs; `cuda:N` is taken
/// as written.
fn parse_for(name: &str, local: Option<usize>) -> Result<Device> {
    let gpu = |idx: usize, asked: &str| -> Result<Device> {
        if !load_cuda() {
            return Err(Error::Input(format!(
                "--device {asked}: no usable CUDA device (libtorch_cuda.so not loadable or no GPU); \
                 on a GPU machine put its torch's lib folder on LD_LIBRARY_PATH"
            )));
        }
        let n = tch::Cuda::device_count() as usize;
        if idx >= n {
            return Err(Error::Input(match local {
                Some(l) if !asked.contains(':') => format!(
                    "--device {asked}: this rank is LOCAL_RANK {l}, and its GPU would be cuda:{l}, but this machine has only {n} \
                     CUDA device(s): start at most one rank per GPU"
                ),
                _ => format!("--device {asked}: only {n} CUDA device(s)"),
            }));
        }
        Ok(Device::Cuda(idx))
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if load_cuda() {
                gpu(local.unwrap_or(0), name)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cuda" => gpu(local.unwrap_or(0), name),
        _ if name.starts_with("cuda:") => {
            let idx: usize = name["cuda:".len()..].parse().map_err(|_| Error::Input(format!("--device {name}: bad GPU index")))?;
            gpu(idx, name)
        }
        _ => Err(Error::Input(format!("--device {name}: expected cpu, cuda, cuda:N or auto"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_names() {
        assert_eq!(super::parse("cpu").unwrap(), tch::Device::Cpu);
        assert!(super::parse("tpu").unwrap_err().to_string().contains("expected cpu"));
        assert!(super::parse("cuda:x").unwrap_err().to_string().contains("bad GPU index"));
    }

    /// One rank of a job: `cuda` means its LOCAL_RANK's GPU, and more ranks than GPUs is an
    /// error that says so (on a machine with no GPU every CUDA name is refused, `auto` is CPU).
    #[test]
    fn a_rank_takes_the_gpu_of_its_local_rank() {
        let n = if super::load_cuda() { tch::Cuda::device_count() as usize } else { 0 };
        for l in 0..n {
            assert_eq!(super::parse_for("cuda", Some(l)).unwrap(), tch::Device::Cuda(l));
            assert_eq!(super::parse_for("auto", Some(l)).unwrap(), tch::Device::Cuda(l));
        }
        if n == 0 {
            assert_eq!(super::parse_for("auto", Some(3)).unwrap(), tch::Device::Cpu);
            assert!(super::parse_for("cuda", Some(0)).unwrap_err().to_string().contains("no usable CUDA device"));
        } else {
            let e = super::parse_for("cuda", Some(n)).unwrap_err().to_string();
            assert!(e.contains(&format!("LOCAL_RANK {n}")) && e.contains("one rank per GPU"), "{e}");
        }
        assert_eq!(super::parse_for("cpu", Some(1)).unwrap(), tch::Device::Cpu);
    }
}
