// The handles of csrc/dist.cpp and csrc/dist_nccl.cpp (a store and a process group). Rust sees
// them as opaque pointers and frees them with r2m_store_free / r2m_group_free.
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "guard.h"

#include <chrono>
#include <stdexcept>

struct R2mStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct R2mGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  // Whether this group's collectives are issued one at a time across the process (csrc/dist.cpp,
  // `issue`): true for Gloo's groups.
  bool issue_serially = false;
};

// Reduce ops, as src/dist/backend.rs numbers them.
enum { R2M_SUM = 0, R2M_MAX = 1, R2M_MIN = 2 };

namespace r2m {

// As r2m::guarded (guard.h), with c10::Error's message cut before its C++ backtrace.
template <typename F>
int guarded_c10(F f, const char* what, char* err, size_t err_len) {
  return guarded(
      [&] {
        try {
          f();
        } catch (const c10::Error& e) {
          throw std::runtime_error(e.what_without_backtrace());
        }
      },
      what, err, err_len);
}

}  // namespace r2m
