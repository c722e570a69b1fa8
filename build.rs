//! Link-time settings for libtorch (see ../shared/design/stack.md and docs/building.md).
//!
//! * An rpath to the torch wheel's `lib/` folder, so that `r2m` runs without a hand-set
//!   LD_LIBRARY_PATH (LD_LIBRARY_PATH still wins: on a GPU machine point it at that machine's
//!   torch to use its CUDA build).
//! * libtorch_cuda is NOT force-linked: a CPU-only torch install has no cuBLAS, and a binary that
//!   needs libtorch_cuda would not start there. `r2m::device` dlopens it when CUDA is asked for.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(lt) = std::env::var("LIBTORCH") {
        let p = PathBuf::from(&lt);
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        let lib = p.join("lib");
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{}", lib.display());
    }
}
