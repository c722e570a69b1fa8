// The handles of csrc/dist.cpp (a store and a process group). Rust sees them as opaque
// pointers and frees them with r2m_store_free / r2m_group_free.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

struct R2mStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct R2mGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

// Reduce ops, as src/dist/backend.rs numbers them.
enum { R2M_SUM = 0, R2M_MAX = 1, R2M_MIN = 2 };
