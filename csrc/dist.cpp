// torch.distributed's c10d from Rust: a TCPStore to meet, a Gloo process group (CPU), and the
// collectives r2m uses, on any process group (csrc/dist_nccl.cpp makes NCCL's, in a shared
// object of its own). Bound in Rust by src/dist/backend.rs. This file needs nothing of CUDA.
//
// Every entry point catches C++ exceptions and returns 1 with the message in `err`: c10::Error's
// message without its C++ backtrace. Every collective carries the group's timeout, after which
// Gloo ends it with an error.
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "dist.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <vector>

namespace {

c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case R2M_SUM:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case R2M_MAX:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    case R2M_MIN:
      return c10d::ReduceOp(c10d::ReduceOp::MIN);
    default:
      throw std::invalid_argument("unknown reduce op " + std::to_string(op));
  }
}

// Waits for `work`. Each collective carries the group's timeout in its options, and Gloo ends it
// with an error when a peer does not answer in time, so the wait lets the collective end there:
// one still running after its caller gave up would go on using its tensors and the group's
// connections while the caller tears the group down. The wait's own limit, the timeout and a
// grace, only guards against a backend that ignores the per-collective timeout.
void finish(const R2mGroup* g, const c10::intrusive_ptr<c10d::Work>& work, const char* what) {
  const int64_t t = g->timeout.count();
  const int64_t grace = t / 2 + 5000;
  const std::chrono::milliseconds limit(t > INT64_MAX - grace ? INT64_MAX : t + grace);
  try {
    if (work->wait(limit)) return;
  } catch (...) {
    // The collective's own error (Gloo's timeout, a closed connection): passed on as it is.
    if (work->isCompleted()) throw;
  }
  throw std::runtime_error(std::string(what) + " did not finish within " +
                           std::to_string(limit.count()) + " ms");
}

// Issues a collective: `f` enqueues it and returns its work, which `finish` then waits for.
//
// c10d keeps one flight recorder per process for every Gloo group, and it registers a group on the
// group's first collective without holding its own lock (FlightRecorder::recordWithResetEnabled in
// torch 2.11). Two Gloo groups of one process issuing collectives from two threads at once, as ranks
// run as threads do, can then corrupt its table and crash. Gloo's groups therefore issue their
// collectives one at a time; issuing only enqueues the work, and the wait runs outside the lock.
// NCCL's groups are left alone: an NCCL group's first collective waits for its peers, and a lock
// held across it would stop peers that live in the same process.
template <typename F>
c10::intrusive_ptr<c10d::Work> issue(const R2mGroup* g, F f) {
  if (!g->issue_serially) return f();
  static std::mutex issuing;
  std::lock_guard<std::mutex> lock(issuing);
  return f();
}

}  // namespace

extern "C" int r2m_store_tcp(const char* host, uint16_t port, int32_t is_server, int64_t world,
                             int64_t timeout_ms, R2mStore** out, char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        c10d::TCPStoreOptions o;
        o.port = port;
        o.isServer = is_server != 0;
        o.numWorkers = static_cast<std::size_t>(world);
        o.waitWorkers = true;
        o.timeout = std::chrono::milliseconds(timeout_ms);
        o.useLibUV = true;
        auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
        *out = new R2mStore{store};
      },
      "unknown C++ exception in TCPStore", err, err_len);
}

extern "C" int r2m_store_prefix(const R2mStore* base, const char* prefix, R2mStore** out,
                                char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base->store);
        *out = new R2mStore{store};
      },
      "unknown C++ exception in PrefixStore", err, err_len);
}

extern "C" int r2m_store_set(const R2mStore* s, const char* key, const uint8_t* value, size_t len,
                             char* err, size_t err_len) {
  return r2m::guarded_c10([&] { s->store->set(std::string(key), std::vector<uint8_t>(value, value + len)); },
                 "unknown C++ exception in Store::set", err, err_len);
}

// The value lands in a malloc'ed buffer the caller frees with r2m_buffer_free.
extern "C" int r2m_store_get(const R2mStore* s, const char* key, uint8_t** value, size_t* len,
                             char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        std::vector<uint8_t> v = s->store->get(std::string(key));
        *len = v.size();
        *value = static_cast<uint8_t*>(std::malloc(v.size() == 0 ? 1 : v.size()));
        if (*value == nullptr) throw std::bad_alloc();
        if (!v.empty()) std::memcpy(*value, v.data(), v.size());
      },
      "unknown C++ exception in Store::get", err, err_len);
}

extern "C" int r2m_store_add(const R2mStore* s, const char* key, int64_t delta, int64_t* out,
                             char* err, size_t err_len) {
  return r2m::guarded_c10([&] { *out = s->store->add(std::string(key), delta); },
                 "unknown C++ exception in Store::add", err, err_len);
}

extern "C" void r2m_buffer_free(uint8_t* p) { std::free(p); }

extern "C" void r2m_store_free(R2mStore* s) { delete s; }

// A Gloo group over `store`. `hostname` (may be null) names the address this rank listens on;
// null means Gloo's default (GLOO_SOCKET_IFNAME if set, else this machine's hostname).
extern "C" int r2m_group_gloo(const R2mStore* s, int64_t rank, int64_t world, int64_t timeout_ms,
                              const char* hostname, R2mGroup** out, char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        auto timeout = std::chrono::milliseconds(timeout_ms);
        c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> opts;
        if (hostname != nullptr) {
          opts = c10d::ProcessGroupGloo::Options::create(timeout);
          opts->devices.push_back(
              c10d::ProcessGroupGloo::createDeviceForHostname(std::string(hostname)));
        } else {
          opts = c10d::ProcessGroupGloo::Options::create_default(timeout);
        }
        c10::intrusive_ptr<c10d::Backend> backend =
            c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, static_cast<int>(rank),
                                                        static_cast<int>(world), opts);
        *out = new R2mGroup{backend, timeout, /*issue_serially=*/true};
      },
      "unknown C++ exception in ProcessGroupGloo", err, err_len);
}

// Shuts the backend down (NCCL's communicators are destroyed here, not left to its destructor,
// which warns and aborts them), then frees the handle.
extern "C" void r2m_group_free(R2mGroup* g) {
  try {
    g->backend->shutdown();
  } catch (...) {
    // Nothing to report to: the group is going away either way.
  }
  delete g;
}

extern "C" int r2m_broadcast(const R2mGroup* g, at::Tensor* t, int64_t root, char* err,
                             size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        std::vector<at::Tensor> ts{*t};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        o.timeout = g->timeout;
        finish(g, issue(g, [&] { return g->backend->broadcast(ts, o); }), "broadcast");
      },
      "unknown C++ exception in broadcast", err, err_len);
}

extern "C" int r2m_all_reduce(const R2mGroup* g, at::Tensor* t, int32_t op, char* err,
                              size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        // One tensor: a list would mean one tensor per device, not "reduce each".
        std::vector<at::Tensor> ts{*t};
        c10d::AllreduceOptions o;
        o.reduceOp = reduce_op(op);
        o.timeout = g->timeout;
        finish(g, issue(g, [&] { return g->backend->allreduce(ts, o); }), "all_reduce");
      },
      "unknown C++ exception in all_reduce", err, err_len);
}

// `out` holds world x numel(input) elements, rank r's input at [r * numel, (r + 1) * numel).
extern "C" int r2m_all_gather(const R2mGroup* g, at::Tensor* out, at::Tensor* input, char* err,
                              size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        c10d::AllgatherOptions o;
        o.timeout = g->timeout;
        finish(g, issue(g, [&] { return g->backend->_allgather_base(*out, *input, o); }),
               "all_gather");
      },
      "unknown C++ exception in all_gather", err, err_len);
}

// `input` holds world x numel(out) elements; rank r receives the reduction of slice r.
extern "C" int r2m_reduce_scatter(const R2mGroup* g, at::Tensor* out, at::Tensor* input,
                                  int32_t op, char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        c10d::ReduceScatterOptions o;
        o.reduceOp = reduce_op(op);
        o.timeout = g->timeout;
        finish(g, issue(g, [&] { return g->backend->_reduce_scatter_base(*out, *input, o); }),
               "reduce_scatter");
      },
      "unknown C++ exception in reduce_scatter", err, err_len);
}

extern "C" int r2m_barrier(const R2mGroup* g, char* err, size_t err_len) {
  return r2m::guarded_c10(
      [&] {
        c10d::BarrierOptions o;
        o.timeout = g->timeout;
        finish(g, issue(g, [&] { return g->backend->barrier(o); }), "barrier");
      },
      "unknown C++ exception in barrier", err, err_len);
}
