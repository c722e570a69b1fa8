//! Link-time settings for libtorch (docs/building.md).
//!
//! * An rpath to the torch wheel's `lib/` folder, so that `r2m` runs without a hand-set
//!   LD_LIBRARY_PATH (LD_LIBRARY_PATH still wins: on a GPU machine point it at that machine's
//!   torch to use its CUDA build).
//! * libtorch_cuda is NOT force-linked: a CPU-only torch install has no cuBLAS, and a binary that
//!   needs libtorch_cuda would not start there. `r2m::device` dlopens it when CUDA is asked for.
//! * csrc/fused.cpp, compiled against the same libtorch's headers (as torch-sys compiles its own
//!   C++): libtorch ops that tch does not bind (the fused AdamW kernel).
//! * csrc/decode.cpp: generation's CPU kernels (sampling, batch-1 matrix-vector products), built
//!   for AVX-512, AVX2 and baseline x86-64 and picked by the CPU at run time; OpenMP, as ATen's
//!   parallel_for needs.
//! * csrc/gemm.cpp: the GEMM of decode steps at batch > 1 on AVX-512 CPUs (packed weights,
//!   the next panel prefetched while one is multiplied).
//! * csrc/mkl_cpu.cpp: MKL's CPU-vendor check, answered so that MKL picks its kernels by the
//!   instruction sets alone (on AMD CPUs too); the symbol is exported from every executable.
//! * csrc/dist.cpp: c10d's TCPStore, Gloo process group and collectives (src/dist/), against
//!   the wheel's c10d headers and gloo's headers vendored in third_party/gloo.
//! * csrc/dist_nccl.cpp: NCCL's process group, as a shared object of its own
//!   (libr2m_dist_nccl.so, next to the binary) that r2m loads only for GPU ranks. Built where the
//!   wheel's CUDA and NCCL headers are (`nvidia/` beside `torch/`, scripts/bootstrap.sh adds the
//!   two header packages the wheel lacks); without them r2m builds and runs, CPU ranks only.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    println!("cargo:rerun-if-changed=csrc/decode.cpp");
    println!("cargo:rerun-if-changed=csrc/gemm.cpp");
    println!("cargo:rerun-if-changed=csrc/guard.h");
    println!("cargo:rerun-if-changed=csrc/mkl_cpu.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.h");
    println!("cargo:rerun-if-changed=csrc/dist_nccl.cpp");
    // libtorch's root: LIBTORCH (set by .cargo/config.toml), else where torch-sys found it.
    let root = match std::env::var("LIBTORCH") {
        Ok(lt) => {
            let p = PathBuf::from(&lt);
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}", p.join("lib").display());
            p
        }
        Err(_) => {
            let lib =
                std::env::var("DEP_TCH_LIBTORCH_LIB").expect("neither LIBTORCH nor torch-sys's libtorch_lib is set: see docs/building.md");
            PathBuf::from(lib).parent().expect("libtorch lib dir has a parent").to_path_buf()
        }
    };
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    // Every shim: C++17 against libtorch's headers with its ABI.
    let shim = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .pic(true)
            .warnings(false)
            .include(root.join("include"))
            .include("csrc")
            .flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .opt_level(2);
        b
    };
    shim().file("csrc/fused.cpp").compile("r2m_fused");
    // r2m's CPU kernels (sampling, matrix-vector): -O3 in every profile (built for several
    // instruction sets inside and must vectorize at each). ATen's parallel_for is an OpenMP
    // region written in its header: without -fopenmp it runs on the calling thread alone. The
    // executables then link libgomp, which resolves to libtorch's own copy at run time (the
    // rpath puts libtorch's folder first, and both carry the soname libgomp.so.1).
    shim()
        .flag("-Wno-psabi") // GCC's note on passing 64-byte vectors: these functions are internal
        // No fused multiply-add: every build rounds after each operation, so all give the same bits.
        .flag("-ffp-contract=off")
        .flag("-fopenmp")
        .opt_level(3)
        .file("csrc/decode.cpp")
        .compile("r2m_decode");
    // The decode GEMM (AVX-512 intrinsics under a target attribute, picked at run time).
    shim().flag("-fopenmp").opt_level(3).file("csrc/gemm.cpp").compile("r2m_gemm");
    println!("cargo:rustc-link-lib=dylib=gomp");
    // MKL (inside libtorch_cpu.so) resolves its vendor check through the dynamic linker: the
    // executable's definition comes first once it is in the dynamic symbol table.
    shim().file("csrc/mkl_cpu.cpp").compile("r2m_mkl_cpu");
    println!("cargo:rustc-link-arg=-Wl,--undefined=mkl_serv_intel_cpu_true");
    println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
    // Each c10d header's body sits inside #ifdef USE_C10D_GLOO.
    shim()
        .include(root.join("include/torch/csrc/api/include"))
        .include("third_party/gloo")
        .flag("-DUSE_C10D_GLOO")
        .file("csrc/dist.cpp")
        .compile("r2m_dist");
    nccl_shim(&root, shim());
}

/// Builds libr2m_dist_nccl.so where the headers are, and tells the crate its path
/// (`R2M_DIST_NCCL_SO`, empty when not built).
fn nccl_shim(root: &Path, mut b: cc::Build) {
    let nvidia = root.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let (cuda, nccl) = (nvidia.join("cu13/include"), nvidia.join("nccl/include"));
    let needed = [
        cuda.join("cuda_runtime_api.h"),
        cuda.join("crt/host_config.h"),
        cuda.join("nv/target"),
        nccl.join("nccl.h"),
        root.join("lib/libtorch_cuda.so"),
        root.join("include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp"),
    ];
    for p in &needed {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    if let Some(missing) = needed.iter().find(|p| !p.exists()) {
        println!(
            "cargo:warning=r2m: {} is missing, so the NCCL process group is not built: data parallel runs use CPU ranks only \
             (scripts/bootstrap.sh installs the CUDA header packages)",
            missing.display()
        );
        println!("cargo:rustc-env=R2M_DIST_NCCL_SO=");
        return;
    }
    let objects = b
        .include(root.join("include/torch/csrc/api/include"))
        .include(&cuda)
        .include(&nccl)
        .flag("-DUSE_C10D_NCCL")
        .flag("-Wno-interference-size")
        .file("csrc/dist_nccl.cpp")
        .compile_intermediates();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("libr2m_dist_nccl.so");
    let lib = root.join("lib");
    let status = b
        .get_compiler()
        .to_command()
        .arg("-shared")
        .arg("-o")
        .arg(&out)
        .args(&objects)
        .arg(format!("-L{}", lib.display()))
        .args(["-ltorch_cuda", "-lc10_cuda", "-ltorch_cpu", "-lc10"])
        .arg(format!("-Wl,--no-undefined,--enable-new-dtags,-rpath,{}", lib.display()))
        .status()
        .expect("running the C++ compiler to link libr2m_dist_nccl.so");
    assert!(status.success(), "linking {} failed", out.display());
    // Also beside the binaries (target/<profile>/), where r2m looks first.
    let profile_dir = out.ancestors().nth(4).map(Path::to_path_buf);
    if let Some(d) = profile_dir.filter(|d| d.is_dir()) {
        let _ = std::fs::copy(&out, d.join("libr2m_dist_nccl.so"));
    }
    println!("cargo:rustc-env=R2M_DIST_NCCL_SO={}", out.display());
}
