// libtorch ops that tch does not bind: ops over tensor lists (its generator skips them) and ops
// registered only through the dispatcher (mkl::*). Bound in Rust by src/ffi.rs.
// Tensors arrive as tch's `C_tensor` pointers, which are `at::Tensor*` (torch-sys's torch_api.h).
// Every entry point catches C++ exceptions and hands the message back: no unwinding into Rust.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Version.h>
#include <ATen/cpu/Utils.h>
#include <algorithm>
#include <string>
#include "guard.h"
#include <vector>

using r2m::copy_error;
using r2m::guarded;

static std::vector<at::Tensor> gather(at::Tensor** ts, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*ts[i]);
  return out;
}

// One AdamW step over `n` parameters with the fused multi-tensor kernel (torch.optim.AdamW with
// fused=True): `steps` are 0-dim float tensors the caller has already incremented.
// Returns 0 on success, 1 with a message in `err`.
extern "C" int r2m_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                               at::Tensor** exp_avg_sqs, at::Tensor** steps, int64_t n, double lr,
                               double beta1, double beta2, double weight_decay, double eps,
                               char* err, size_t err_len) {
  return guarded(
      [&] {
        std::vector<at::Tensor> max_v;
        at::_fused_adamw_(gather(params, n), gather(grads, n), gather(exp_avgs, n),
                          gather(exp_avg_sqs, n), max_v, gather(steps, n), lr, beta1, beta2,
                          weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
        // The fused kernel does not bump the parameters' version counters (torch 2.11: in Python
        // too), unlike an in-place `add_`: bump them, so that caches keyed on the version
        // (model::packed's kept copies) see the update.
        for (int64_t i = 0; i < n; ++i) params[i]->unsafeGetTensorImpl()->bump_version();
      },
      "unknown C++ exception in _fused_adamw_", err, err_len);
}

// Sets the `.grad` of `n` tensors to undefined (PyTorch's `zero_grad(set_to_none=True)`, its
// default): the next backward then stores its gradient buffer instead of zero-filling and adding
// into the old one. Returns 0 on success, 1 with a message in `err`.
extern "C" int r2m_clear_grads(at::Tensor** ts, int64_t n, char* err, size_t err_len) {
  return guarded(
      [&] {
        for (int64_t i = 0; i < n; ++i) ts[i]->mutable_grad().reset();
      },
      "unknown C++ exception in r2m_clear_grads", err, err_len);
}

// The tensor's version counter (`tensor._version`): every in-place write through the dispatcher
// (an optimizer step, `copy_` from a checkpoint) bumps it, under no_grad too. Inference-mode
// tensors have none: the C++ exception comes back as an error.
extern "C" int r2m_tensor_version(at::Tensor* t, int64_t* out, char* err, size_t err_len) {
  return guarded([&] { *out = t->_version(); }, "unknown C++ exception in _version", err, err_len);
}

// MKL-packed weights for CPU matmuls with a fixed row count (what torch's CPU inference path
// uses after `torch.jit.freeze` / inductor weight prepacking): `mkl::_mkl_reorder_linear_weight`
// packs W (out, in) once for `m` rows; `mkl::_mkl_linear` then multiplies without re-packing W on
// every call. Results equal `at::linear`'s; rows != m fall back to it inside the op. These ops are
// registered by libtorch_cpu only when it was built with MKL: a missing op is an error here, and
// the caller then keeps the plain path.
extern "C" int r2m_mkl_pack(at::Tensor* w, int64_t m, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("mkl::_mkl_reorder_linear_weight", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t)>();
        *out = new at::Tensor(op.call(*w, m));
      },
      "unknown C++ exception in mkl::_mkl_reorder_linear_weight", err, err_len);
}

extern "C" int r2m_mkl_linear(at::Tensor* x, at::Tensor* packed, at::Tensor* w, at::Tensor* bias,
                              int64_t m, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        static auto op =
            c10::Dispatcher::singleton()
                .findSchemaOrThrow("mkl::_mkl_linear", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  const std::optional<at::Tensor>&, int64_t)>();
        std::optional<at::Tensor> b;
        if (bias != nullptr) b = *bias;
        *out = new at::Tensor(op.call(*x, *packed, *w, b, m));
      },
      "unknown C++ exception in mkl::_mkl_linear", err, err_len);
}

// Autocast (torch.autocast) for one device type (0 = CPU, 1 = CUDA) on this thread: matmuls,
// linear layers and attention run in `dtype` (0 = bfloat16, 1 = float16) over f32
// weights, which stay the master copy. `enter` records what was set before in prev[0..2]
// (enabled, dtype: kept as c10::ScalarType's code, read back only here) and opens a nesting level; `exit` restores it, and when the outermost level
// closes frees the casts autocast cached (of leaf tensors that require grad), as
// torch.autocast's __exit__ does.
static at::DeviceType autocast_device(int device) { return device == 1 ? at::kCUDA : at::kCPU; }

extern "C" int r2m_autocast_enter(int device, int dtype, int* prev, char* err, size_t err_len) {
  return guarded(
      [&] {
        auto d = autocast_device(device);
        prev[0] = at::autocast::is_autocast_enabled(d) ? 1 : 0;
        prev[1] = static_cast<int>(at::autocast::get_autocast_dtype(d));
        at::autocast::set_autocast_enabled(d, true);
        at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
        at::autocast::increment_nesting();
      },
      "unknown C++ exception in autocast enter", err, err_len);
}

extern "C" int r2m_autocast_exit(int device, const int* prev, char* err, size_t err_len) {
  return guarded(
      [&] {
        auto d = autocast_device(device);
        if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
        at::autocast::set_autocast_enabled(d, prev[0] != 0);
        at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(prev[1]));
      },
      "unknown C++ exception in autocast exit", err, err_len);
}

// ---------------------------------------------------------------------------------------------
// Activation checkpointing (torch.utils.checkpoint, use_reentrant=True): a block runs without
// saving its activations; its backward runs it again from the saved input, with grad, and
// back-propagates through that copy. The block is a Rust closure behind `ctx` (src/ffi.rs):
// `call` runs it (returns a new at::Tensor, or null with a message in err); `drop` frees it when
// the autograd node that holds it goes away (after backward, or when the graph is dropped).
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/autograd.h>
#include <stdexcept>
#include <string>

typedef at::Tensor* (*r2m_block_call)(void* ctx, at::Tensor* x, char* err, size_t err_len);
typedef void (*r2m_block_drop)(void* ctx);

struct RustBlock : torch::CustomClassHolder {
  void* ctx;
  r2m_block_call call_;
  r2m_block_drop drop_;
  RustBlock(void* c, r2m_block_call f, r2m_block_drop d) : ctx(c), call_(f), drop_(d) {}
  ~RustBlock() override { drop_(ctx); }
  at::Tensor run(const at::Tensor& x) {
    char err[1024] = {0};
    at::Tensor* out = call_(ctx, new at::Tensor(x), err, sizeof err);  // Rust owns the input copy
    if (out == nullptr) throw std::runtime_error(std::string("checkpointed block: ") + err);
    at::Tensor r = *out;
    delete out;
    return r;
  }
};

// Autocast's thread-local state for CPU and CUDA: recorded in forward, set again for the
// recomputation (backward may run on another thread, and outside the caller's autocast scope).
struct AutocastState {
  bool on[2];
  int64_t dtype[2];
  static AutocastState now() {
    AutocastState s;
    for (int d = 0; d < 2; ++d) {
      s.on[d] = at::autocast::is_autocast_enabled(autocast_device(d));
      s.dtype[d] = static_cast<int64_t>(at::autocast::get_autocast_dtype(autocast_device(d)));
    }
    return s;
  }
  void set() const {
    for (int d = 0; d < 2; ++d) {
      at::autocast::set_autocast_enabled(autocast_device(d), on[d]);
      at::autocast::set_autocast_dtype(autocast_device(d), static_cast<at::ScalarType>(dtype[d]));
    }
  }
};

struct R2mCheckpoint : public torch::autograd::Function<R2mCheckpoint> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, at::TensorList params,
                            c10::intrusive_ptr<RustBlock> f) {
    // Custom functions' forward runs with grad mode off: nothing inside is saved.
    auto ac = AutocastState::now();
    ctx->saved_data["f"] = c10::IValue::make_capsule(f);
    ctx->saved_data["x_grad"] = x.requires_grad();
    for (int d = 0; d < 2; ++d) {
      ctx->saved_data["ac_on" + std::to_string(d)] = ac.on[d];
      ctx->saved_data["ac_dtype" + std::to_string(d)] = ac.dtype[d];
    }
    std::vector<at::Tensor> saved{x};
    for (const auto& p : params) saved.push_back(p);
    ctx->save_for_backward(saved);
    return f->run(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto f = c10::static_intrusive_pointer_cast<RustBlock>(ctx->saved_data["f"].toCapsule());
    bool x_grad = ctx->saved_data["x_grad"].toBool();
    AutocastState want;
    for (int d = 0; d < 2; ++d) {
      want.on[d] = ctx->saved_data["ac_on" + std::to_string(d)].toBool();
      want.dtype[d] = ctx->saved_data["ac_dtype" + std::to_string(d)].toInt();
    }
    auto prev = AutocastState::now();
    at::Tensor x = saved[0].detach().requires_grad_(x_grad);
    at::Tensor y;
    {
      at::AutoGradMode grad_on(true);
      want.set();
      at::autocast::increment_nesting();
      try {
        y = f->run(x);
      } catch (...) {
        if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
        prev.set();
        throw;
      }
      if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
      prev.set();
    }
    // Gradients for x (when it needs one) and every parameter, through the recomputed graph.
    std::vector<at::Tensor> inputs;
    if (x_grad) inputs.push_back(x);
    for (size_t i = 1; i < saved.size(); ++i) inputs.push_back(saved[i]);
    std::vector<at::Tensor> g;
    if (!inputs.empty() && y.requires_grad())
      g = torch::autograd::grad({y}, inputs, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                /*allow_unused=*/true);
    torch::autograd::variable_list out;
    size_t k = 0;
    out.push_back(x_grad && k < g.size() ? g[k++] : at::Tensor());
    for (size_t i = 1; i < saved.size(); ++i) out.push_back(k < g.size() ? g[k++] : at::Tensor());
    out.push_back(at::Tensor());  // the block itself
    return out;
  }
};

// y = block(x) with activation checkpointing. `params`: the block's tensors that require grad.
// Takes ownership of `ctx` in every case (freed through `drop` on failure too).
extern "C" int r2m_checkpoint(at::Tensor* x, at::Tensor** params, int64_t n, void* ctx, r2m_block_call call,
                              r2m_block_drop drop, at::Tensor** out, char* err, size_t err_len) {
  c10::intrusive_ptr<RustBlock> f;
  try {
    f = c10::make_intrusive<RustBlock>(ctx, call, drop);
  } catch (...) {
    drop(ctx);
    copy_error("out of memory for the checkpointed block", err, err_len);
    return 1;
  }
  return guarded(
      [&] {
        std::vector<at::Tensor> ps = gather(params, n);
        *out = new at::Tensor(R2mCheckpoint::apply(*x, at::TensorList(ps), f));
      },
      "unknown C++ exception in checkpoint", err, err_len);
}

// Whether autograd records operations on this thread (torch.is_grad_enabled()).
extern "C" int r2m_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// What libtorch's CPU kernels see of this CPU: ATen's dispatch level (at::get_cpu_capability:
// "DEFAULT", "AVX2", "AVX512", ...), then ';' and the instruction-set features cpuinfo reports
// present (at::cpu::get_cpu_capabilities: avx2, avx512_bf16, amx_tile, ...), comma-separated and
// sorted, written NUL-terminated into `out` (cut at out_len - 1 bytes).
extern "C" int r2m_cpu_isa(char* out, size_t out_len, char* err, size_t err_len) {
  return guarded(
      [&] {
        std::string s = at::get_cpu_capability() + ";";
        std::vector<std::string> names;
        for (const auto& kv : at::cpu::get_cpu_capabilities()) {
          if (kv.second.isBool() && kv.second.toBool()) names.push_back(kv.first);
        }
        std::sort(names.begin(), names.end());
        for (size_t i = 0; i < names.size(); ++i) s += (i ? "," : "") + names[i];
        copy_error(s.c_str(), out, out_len);
      },
      "cpu_isa", err, err_len);
}
