// The shims' error handling (csrc/fused.cpp, csrc/decode.cpp; the c10d shims use dist.h's
// `guarded_c10`, which also cuts c10::Error's backtrace): every entry point runs its body through
// `guarded`, so a C++ exception becomes status 1 and a message for Rust, never an unwind.
#pragma once
#include <cstring>
#include <exception>

namespace r2m {

// Copies `what` into `out` (NUL-terminated, cut at out_len - 1 bytes).
inline void copy_error(const char* what, char* out, size_t out_len) {
  if (out_len == 0) return;
  std::strncpy(out, what, out_len - 1);
  out[out_len - 1] = '\0';
}

// Runs `f`, turning any C++ exception into 1 and its message in `err` (`what` when it has none);
// 0 on success.
template <typename F>
int guarded(F f, const char* what, char* err, size_t err_len) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
  } catch (...) {
    copy_error(what, err, err_len);
  }
  return 1;
}

}  // namespace r2m
