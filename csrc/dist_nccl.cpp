// NCCL's process group (c10d::ProcessGroupNCCL) for GPU ranks. Built, where the torch wheel's CUDA
// and NCCL headers are present, as a shared object of its own (libr2m_dist_nccl.so) that
// src/dist/backend.rs loads at run time, on CUDA only: the r2m binary itself links nothing of
// CUDA and runs on CPU-only machines. The group it returns is an R2mGroup like Gloo's, driven by
// the collectives of csrc/dist.cpp.
//
// ProcessGroupNCCL::Options is laid out by the NCCL version's feature macros, so this file must
// see the nccl.h that the wheel's libtorch_cuda was built with (the wheel pins nvidia-nccl).
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "dist.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>

static_assert(NCCL_MAJOR == 2 && NCCL_MINOR == 28,
              "csrc/dist_nccl.cpp expects NCCL 2.28's headers, the version torch 2.11's wheel pins");

// A group of `world` GPU ranks over `store`, this rank on CUDA device `device`. Collectives carry
// `timeout_ms` (the wait in csrc/dist.cpp blocks the host until each ends or times out).
extern "C" int r2m_group_nccl(const R2mStore* s, int64_t rank, int64_t world, int64_t timeout_ms,
                              int64_t device, R2mGroup** out, char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        // A timed-out or failed collective ends as an error in its wait, which r2m reports and
        // exits on, rather than the watchdog taking the process down first (unless the user
        // chose otherwise).
        setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", 0);
        const auto index = static_cast<c10::DeviceIndex>(device);
        c10::cuda::set_device(index);
        const auto timeout = std::chrono::milliseconds(timeout_ms);
        auto opts = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = timeout;
        auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s->store, static_cast<int>(rank),
                                                              static_cast<int>(world), opts);
        const at::Device gpu(at::kCUDA, index);
        pg->setBoundDeviceId(gpu);
        // The communicator now, while every rank is here: a rank that cannot reach the others
        // fails at the start, not in the first gradient all-reduce.
        pg->eagerConnectSingleDevice(gpu);
        c10::intrusive_ptr<c10d::Backend> backend = pg;
        *out = new R2mGroup{backend, timeout};
      },
      "unknown C++ exception in ProcessGroupNCCL", err, err_len);
}
