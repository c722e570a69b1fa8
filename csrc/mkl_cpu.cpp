// MKL's CPU-vendor check, answered for MKL.
//
// The MKL that libtorch links picks its kernels by two tests: which instruction sets the CPU
// reports, and whether its vendor is Intel (`mkl_serv_intel_cpu_true`, which libtorch_cpu.so
// exports and calls through the dynamic linker). On a CPU of another vendor it takes slower,
// generic code paths whatever the CPU supports: on an AMD EPYC (Zen 4, AVX-512) its f32 GEMM at
// generation's shapes runs at about half the speed of its AVX-512 path on the same CPU. r2m's
// executables define the symbol (build.rs exports it), so MKL asks this function instead: it
// answers "Intel" on every x86-64 CPU, and MKL then chooses its kernels by the instruction sets
// alone. R2M_MKL_VENDOR_CHECK=mkl keeps MKL's own answer.
#include <dlfcn.h>
#include <cstdlib>
#include <cstring>

namespace {

using VendorCheck = int (*)();

int mkl_own_answer() {
  // The next definition in the lookup order: libtorch_cpu.so's.
  auto real = reinterpret_cast<VendorCheck>(dlsym(RTLD_NEXT, "mkl_serv_intel_cpu_true"));
  return real != nullptr ? real() : 0;
}

}  // namespace

extern "C" __attribute__((visibility("default"), used)) int mkl_serv_intel_cpu_true() {
  static const int answer = [] {
    const char* keep = std::getenv("R2M_MKL_VENDOR_CHECK");
    return keep != nullptr && std::strcmp(keep, "mkl") == 0 ? mkl_own_answer() : 1;
  }();
  return answer;
}

// For r2m to report which answer MKL gets: 1 where MKL's own check said "not Intel" and this
// function overrode it.
extern "C" int r2m_mkl_vendor_overridden() {
  const char* keep = std::getenv("R2M_MKL_VENDOR_CHECK");
  if (keep != nullptr && std::strcmp(keep, "mkl") == 0) return 0;
  return mkl_own_answer() == 0 ? 1 : 0;
}
