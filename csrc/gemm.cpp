// r2m's GEMM for decode steps at batch > 1 (bound in Rust by src/ffi.rs, used by
// src/model/packed.rs): y = x W^T + bias for a (M, K) input with a few dozen rows and a weight
// W (N, K) packed once per `generate` call.
//
// A decode step multiplies each weight, once, by the (B, D) activations of that step: every
// weight byte comes from memory (a 135M model's 538 MB of f32 do not stay in any cache between
// steps), and the arithmetic per byte is B/2 FMAs. MKL's packed GEMM computes at the GEMM peak
// once a weight is in cache, but takes the weight's load from memory mostly on top of that. This
// kernel hides the load behind the arithmetic: the weight is packed in panels of 48 output
// columns (K x 48, contiguous), each thread works through its panels one after another, and while
// it multiplies one panel by every row of x it prefetches the next panel into its L2, a few cache
// lines per step of the inner loop; on its last panel, the panel it will start the next call with
// (the caller says which weights come next). Several weights that take the same x (q, k and v;
// gate and up) go through one call, their panels end to end.
//
// The micro-kernel keeps an 8 x 48 tile of y in 24 AVX-512 registers and runs over k: three
// loads of the panel, eight broadcasts of x, 24 FMAs. Each value of y is one chain of FMAs over
// k = 0..K-1 in order, then + bias: it does not depend on the thread count, on M or on the other
// rows, and it equals at::linear's to f32 rounding (not bit for bit: MKL sums in another order).
// AVX-512 only; elsewhere r2m keeps MKL (r2m_gemm_available).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>
#include "guard.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using r2m::guarded;

namespace {

constexpr int64_t kNr = 48;  // output columns per panel: three 16-lane registers
constexpr int64_t kMr = 8;   // rows of x per tile
constexpr int64_t kLine = 64;

#if defined(__x86_64__)
#define R2M_AVX512 __attribute__((target("avx512f")))

// y[r, 0..48) for the `MR` rows of x at x (row stride ldx), the panel wp (K x 48), then + bias
// (the panel's columns of it, or null for none) into y (row stride ldy), columns masked by m0..m2. While it runs, it
// prefetches `pf_lines` cache lines from `pf` into L2, evenly over the steps of k.
template <int MR>
R2M_AVX512 static inline void tile(int64_t k_len, const float* x, int64_t ldx, const float* wp, const float* bias,
                                   float* y, int64_t ldy, __mmask16 m0, __mmask16 m1, __mmask16 m2, const char* pf,
                                   int64_t pf_lines) {
  __m512 c[MR][3];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = c[r][2] = _mm512_setzero_ps();
  // Line `line` is due at step line * k_len / pf_lines.
  int64_t line = 0, due = 0;
  for (int64_t k = 0; k < k_len; ++k) {
    for (due += pf_lines; due >= k_len && line < pf_lines; due -= k_len, ++line) _mm_prefetch(pf + line * kLine, _MM_HINT_T1);
    const float* w = wp + k * kNr;
    const __m512 w0 = _mm512_load_ps(w), w1 = _mm512_load_ps(w + 16), w2 = _mm512_load_ps(w + 32);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + k]);
      c[r][0] = _mm512_fmadd_ps(a, w0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(a, w1, c[r][1]);
      c[r][2] = _mm512_fmadd_ps(a, w2, c[r][2]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  const __m512 b0 = bias != nullptr ? _mm512_maskz_loadu_ps(m0, bias) : zero;
  const __m512 b1 = bias != nullptr ? _mm512_maskz_loadu_ps(m1, bias + 16) : zero;
  const __m512 b2 = bias != nullptr ? _mm512_maskz_loadu_ps(m2, bias + 32) : zero;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, _mm512_add_ps(c[r][0], b0));
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, _mm512_add_ps(c[r][1], b1));
    _mm512_mask_storeu_ps(y + r * ldy + 32, m2, _mm512_add_ps(c[r][2], b2));
  }
}

// One weight of a call: its panels, N, its bias (N values, or null), and y (M, N).
struct Part {
  const float* packed;
  int64_t panels;
  int64_t n;
  const float* bias;
  float* y;
};

// Panels [g0, g1) of the call's panels, counted over its parts end to end (`first`: each part's
// first panel), for rows [row0, row0 + m) of x (M, K). While it works on one panel it prefetches the next
// one; while on its last, `after` (the panel this thread starts the next call with, `after_lines`
// cache lines), so that the next call's first panel does not wait for memory either.
R2M_AVX512 static void panels(const float* x, int64_t row0, int64_t m, int64_t k_len, const Part* parts,
                              const int64_t* first, int64_t g0, int64_t g1, const char* after, int64_t after_lines) {
  const int64_t tiles = (m + kMr - 1) / kMr;
  const int64_t panel_floats = k_len * kNr;
  const int64_t panel_lines = panel_floats * 4 / kLine;
  int64_t j = 0;
  for (int64_t g = g0; g < g1; ++g) {
    while (g >= first[j + 1]) ++j;
    const Part& part = parts[j];
    const int64_t p = g - first[j];
    const float* wp = part.packed + p * panel_floats;
    const char* next = after;
    int64_t next_lines = after_lines;
    if (g + 1 < g1) {
      const int64_t jn = g + 1 < first[j + 1] ? j : j + 1;
      next = reinterpret_cast<const char*>(parts[jn].packed + (g + 1 - first[jn]) * panel_floats);
      next_lines = panel_lines;
    }
    // Each tile prefetches its share of the next panel's lines.
    const int64_t share = (next_lines + tiles - 1) / tiles;
    const int64_t col = p * kNr;
    const int64_t cols = part.n - col < kNr ? part.n - col : kNr;
    const auto mask = [&](int64_t i) -> __mmask16 {
      const int64_t v = cols - 16 * i;
      return v >= 16 ? static_cast<__mmask16>(0xFFFF) : v <= 0 ? 0 : static_cast<__mmask16>((1u << v) - 1);
    };
    const __mmask16 m0 = mask(0), m1 = mask(1), m2 = mask(2);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * kMr;
      const int64_t rows = m - r0 < kMr ? m - r0 : kMr;
      const int64_t row = row0 + r0;
      const int64_t from = t * share;
      const int64_t lines = next == nullptr || from >= next_lines ? 0 : std::min(share, next_lines - from);
      const char* pf = next == nullptr ? nullptr : next + from * kLine;
      const float* xr = x + row * k_len;
      float* yr = part.y + row * part.n + col;
      const float* b = part.bias != nullptr ? part.bias + col : nullptr;
      switch (rows) {
#define R2M_TILE(R) \
  case R: tile<R>(k_len, xr, k_len, wp, b, yr, part.n, m0, m1, m2, pf, lines); break;
        R2M_TILE(8) R2M_TILE(7) R2M_TILE(6) R2M_TILE(5) R2M_TILE(4) R2M_TILE(3) R2M_TILE(2) R2M_TILE(1)
#undef R2M_TILE
      }
    }
  }
}
#endif

bool detect_avx512() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
  static const bool has = detect_avx512();
  return has;
}

}  // namespace

// 1 where this CPU can run the kernel (AVX-512F), else 0.
extern "C" int r2m_gemm_available() { return cpu_has_avx512() ? 1 : 0; }

// Whether `generate` decodes batches of more than one row with this kernel rather than MKL's
// packed GEMM: where measured faster, Intel CPUs with AVX-512 (docs/benchmarks.md). R2M_GEMM=r2m
// or =mkl chooses either way (r2m only where the CPU has AVX-512).
extern "C" int r2m_gemm_preferred() {
  if (!cpu_has_avx512()) return 0;
  const char* forced = std::getenv("R2M_GEMM");
  if (forced != nullptr && std::strcmp(forced, "r2m") == 0) return 1;
  if (forced != nullptr && std::strcmp(forced, "mkl") == 0) return 0;
#if defined(__x86_64__)
  return __builtin_cpu_is("intel") ? 1 : 0;
#else
  return 0;
#endif
}

// W (N, K) f32 on the CPU -> its panels: (ceil(N / 48), K, 48) f32, packed[p][k][c] = W[48 p + c][k],
// zero past N.
extern "C" int r2m_gemm_pack(at::Tensor* w, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        TORCH_CHECK(w->dim() == 2 && w->scalar_type() == at::kFloat && w->device().is_cpu(),
                    "gemm_pack: the weight must be (N, K) f32 on the CPU, not ", w->sizes());
        const at::Tensor wc = w->contiguous();
        const int64_t n = wc.size(0), k = wc.size(1);
        const int64_t np = (n + kNr - 1) / kNr;
        at::Tensor packed = at::zeros({np, k, kNr}, wc.options());
        const float* src = wc.data_ptr<float>();
        float* dst = packed.data_ptr<float>();
        at::parallel_for(0, np, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p)
            for (int64_t c = 0; c < kNr && p * kNr + c < n; ++c) {
              const float* row = src + (p * kNr + c) * k;
              float* col = dst + p * k * kNr + c;
              for (int64_t i = 0; i < k; ++i) col[i * kNr] = row[i];
            }
        });
        *out = new at::Tensor(packed);
      },
      "gemm_pack", err, err_len);
}

// The first work item thread `tid` of `threads` takes in a call of `total` items, as
// at::parallel_for(0, total, 1, ...) splits them (contiguous chunks of ceil(total / tasks)).
static int64_t first_item_of(int64_t tid, int64_t threads, int64_t total) {
  const int64_t tasks = std::min(threads, total);
  const int64_t chunk = tasks > 0 ? (total + tasks - 1) / tasks : 0;
  return tid * chunk;
}

// Into how many blocks a call of `total` panels splits the rows of x (`tiles` 8-row tiles): one
// while there are at least 4 panels per thread, else as many as that takes (up to one per tile),
// so that many threads share few panels, each with its own rows. Work item w is panel w % total of
// row block w / total: each thread takes panels one after another for one block of rows.
static int64_t row_blocks(int64_t threads, int64_t total, int64_t tiles) {
  const int64_t want = total > 0 ? (4 * threads + total - 1) / total : 1;
  return std::max<int64_t>(1, std::min(want, tiles));
}

// Rows [first, end) of row block c of `blocks` over `tiles` tiles of x's m rows.
static std::pair<int64_t, int64_t> block_rows(int64_t c, int64_t blocks, int64_t tiles, int64_t m) {
  const int64_t t0 = c * tiles / blocks, t1 = (c + 1) * tiles / blocks;
  return {t0 * kMr, std::min(m, t1 * kMr)};
}

// y_j = x W_j^T + bias_j for `count` weights that take the same x (q, k and v; gate and up) in one
// parallel region: x (..., K) f32 (any leading dims, M rows in all); packed[j] = r2m_gemm_pack(W_j);
// ns[j] = W_j's N; biases[j] (N_j) f32 or null. Writes out[j] (M, N_j) f32. Panels are spread over
// ATen's intra-op threads, the weights' panels end to end. `next` (`next_count` packed weights,
// none when 0): what the caller multiplies next; each thread prefetches the panel it will start
// that call with while it finishes this one (a hint: any weights, or none, give the same values).
extern "C" int r2m_gemm(at::Tensor* x, at::Tensor** packed, const int64_t* ns, at::Tensor** biases, int count,
                        at::Tensor** next, int next_count, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
#if defined(__x86_64__)
        TORCH_CHECK(cpu_has_avx512(), "gemm: this CPU has no AVX-512");
        TORCH_CHECK(count >= 1, "gemm: no weight given");
        TORCH_CHECK(x->scalar_type() == at::kFloat && x->device().is_cpu() && x->dim() >= 1,
                    "gemm: the input must be f32 on the CPU");
        const int64_t k = x->size(-1);
        const at::Tensor xc = x->contiguous();
        const int64_t m = k > 0 ? xc.numel() / k : 0;
        std::vector<Part> parts(count);
        std::vector<int64_t> first(count + 1, 0);
        std::vector<at::Tensor> keep, ys;
        for (int j = 0; j < count; ++j) {
          const at::Tensor& pk = *packed[j];
          const int64_t n = ns[j];
          TORCH_CHECK(pk.dim() == 3 && pk.scalar_type() == at::kFloat && pk.device().is_cpu() && pk.size(2) == kNr &&
                          pk.is_contiguous(),
                      "gemm: weight ", j, " must come from gemm_pack, not ", pk.sizes());
          const int64_t np = pk.size(0);
          TORCH_CHECK(pk.size(1) == k, "gemm: the input's last dim is ", k, ", weight ", j, "'s K is ", pk.size(1));
          TORCH_CHECK(n > (np - 1) * kNr && n <= np * kNr, "gemm: N = ", n, " does not fit weight ", j, "'s ", np,
                      " panels");
          const float* bp = nullptr;
          if (biases[j] != nullptr) {
            const at::Tensor& b = *biases[j];
            TORCH_CHECK(b.scalar_type() == at::kFloat && b.device().is_cpu() && b.numel() == n,
                        "gemm: bias ", j, " must hold ", n, " f32 values on the CPU");
            keep.push_back(b.contiguous());
            bp = keep.back().data_ptr<float>();
          }
          at::Tensor y = at::empty({m, n}, xc.options());
          parts[j] = Part{pk.data_ptr<float>(), np, n, bp, y.data_ptr<float>()};
          first[j + 1] = first[j] + np;
          ys.push_back(y);
        }
        // The next call's panels end to end, for each thread's first one.
        std::vector<const float*> next_packed;
        std::vector<int64_t> next_first(1, 0), next_k;
        for (int j = 0; j < next_count; ++j) {
          const at::Tensor& pk = *next[j];
          if (pk.dim() != 3 || pk.scalar_type() != at::kFloat || pk.size(2) != kNr || !pk.is_contiguous()) continue;
          next_packed.push_back(pk.data_ptr<float>());
          next_k.push_back(pk.size(1));
          next_first.push_back(next_first.back() + pk.size(0));
        }
        if (m > 0) {
          const float* xp = xc.data_ptr<float>();
          const int64_t threads = at::get_num_threads(), tiles = (m + kMr - 1) / kMr;
          const int64_t total = first[count], blocks = row_blocks(threads, total, tiles);
          const int64_t next_total = next_first.back();
          const int64_t next_blocks = row_blocks(threads, next_total, tiles);
          // Panel g of this call, as a prefetch target.
          const auto panel_at = [&](int64_t g) {
            int64_t j = 0;
            while (g >= first[j + 1]) ++j;
            return reinterpret_cast<const char*>(parts[j].packed + (g - first[j]) * k * kNr);
          };
          at::parallel_for(0, total * blocks, 1, [&](int64_t w0, int64_t w1) {
            // The panel this thread starts the next call with.
            const char* after = nullptr;
            int64_t after_lines = 0;
            if (next_total > 0) {
              const int64_t g = first_item_of(at::get_thread_num(), threads, next_total * next_blocks) % next_total;
              for (size_t j = 0; j < next_packed.size(); ++j)
                if (g >= next_first[j] && g < next_first[j + 1]) {
                  after = reinterpret_cast<const char*>(next_packed[j] + (g - next_first[j]) * next_k[j] * kNr);
                  after_lines = next_k[j] * kNr * 4 / kLine;
                }
            }
            // One run of panels per row block in [w0, w1).
            for (int64_t w = w0; w < w1;) {
              const int64_t c = w / total, end = std::min(w1, (c + 1) * total);
              const auto rows = block_rows(c, blocks, tiles, m);
              const bool last = end == w1;
              panels(xp, rows.first, rows.second - rows.first, k, parts.data(), first.data(), w - c * total,
                     end - c * total, last ? after : panel_at(end % total), last ? after_lines : k * kNr * 4 / kLine);
              w = end;
            }
          });
        }
        for (int j = 0; j < count; ++j) out[j] = new at::Tensor(ys[j]);
#else
        TORCH_CHECK(false, "gemm: r2m's GEMM needs an x86-64 CPU with AVX-512");
#endif
      },
      "gemm", err, err_len);
}
