//! Link-time settings for libtorch (docs/building.md).
//!
//! * An rpath to the torch wheel's `lib/` folder, so that `r2m` runs without a hand-set
//!   LD_LIBRARY_PATH (LD_LIBRARY_PATH still wins: on a GPU machine point it at that machine's
//!   torch to use its CUDA build).
//! * libtorch_cuda is NOT force-linked: a CPU-only torch install has no cuBLAS, and a binary that
//!   needs libtorch_cuda would not start there. `r2m::device` dlopens it when CUDA is asked for.
//! * csrc/fused.cpp, compiled against the same libtorch's headers (as torch-sys compiles its own
//!   C++): libtorch ops that tch does not bind (the fused AdamW kernel).
//! * csrc/decode.cpp: the CPU kernel of generation's sampling, built
//!   for AVX-512, AVX2 and baseline x86-64 and picked by the CPU at run time.
//! * csrc/dist.cpp: c10d's TCPStore, Gloo process group and collectives (src/dist/), against
//!   the wheel's c10d headers and gloo's headers vendored in third_party/gloo.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    println!("cargo:rerun-if-changed=csrc/decode.cpp");
    println!("cargo:rerun-if-changed=csrc/guard.h");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.h");
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
    // The sampling kernel: -O3 in every profile (it is built for several instruction sets inside
    // and must vectorize at each).
    shim()
        .flag("-Wno-psabi") // GCC's note on passing 64-byte vectors: these functions are internal
        .opt_level(3)
        .file("csrc/decode.cpp")
        .compile("r2m_decode");
    // Each c10d header's body sits inside #ifdef USE_C10D_GLOO.
    shim()
        .include(root.join("include/torch/csrc/api/include"))
        .include("third_party/gloo")
        .flag("-DUSE_C10D_GLOO")
        .file("csrc/dist.cpp")
        .compile("r2m_dist");
}
