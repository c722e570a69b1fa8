// The CPU kernels of `generate` (bound in Rust by src/ffi.rs):
// - r2m_sample_logits draws a token from softmax(logits / temperature) with its log-prob and the
//   entropy, row by row from the logits, with no (B, V) temporary (top-k and top-p sampling keep
//   the tensor ops);
// - r2m_matvec multiplies a weight matrix by one input row (a batch-1 decode step), streaming the
//   weights from memory once;
// - r2m_decode_attention attends one query token over the KV cache, reading each cached key and
//   value once for all the query heads that share it (GQA);
// - r2m_rms_norm normalises rows as the decoder's RMSNorm, in one pass per row;
// - r2m_rope turns q or k by RoPE, and r2m_silu_mul is the gated MLP's silu(gate) * up, each in
//   one pass instead of several tensor ops.
//
// Each kernel is compiled three times, for AVX-512, AVX2 + FMA and baseline x86-64 (or once, on
// other CPUs), from the same source: 16 lanes held as GCC generic vectors of the build's own
// register width (`Vec<C>` below). The widest level the CPU has is picked at load time
// (R2M_CPU_KERNELS=avx2 or =baseline forces a lower one). Rows are spread over ATen's intra-op
// threads; each row is computed sequentially, so results do not depend on the thread count. The builds do the same operations
// in the same order (16 lanes; build.rs turns off the contraction into fused multiply-adds), so
// they give the same bits.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include "guard.h"
#include <limits>
#include <string>
#include <vector>

using r2m::guarded;

#define R2M_INLINE inline __attribute__((always_inline))

// Every kernel computes in 16 lanes on every CPU: each build does the same operations in the same
// order, so every build gives the same bits. A build holds the 16 lanes as kW / C vectors of C
// lanes, C being the widest float vector its instruction set has: 16 for AVX-512, 8 for AVX2, 4
// for SSE (and NEON). (GCC keeps a 16-lane generic vector that no register of the build holds in
// memory, and makes its comparisons and splats lane by lane: C-lane pieces stay in registers.)
constexpr int64_t kW = 16;

template <int C>
struct Vec {
  typedef float P __attribute__((vector_size(C * 4)));
  typedef int32_t I __attribute__((vector_size(C * 4)));
  static constexpr int kN = kW / C;
  P p[kN];
};

template <int C>
static R2M_INLINE Vec<C> load(const float* x) {
  Vec<C> r;
  for (int i = 0; i < Vec<C>::kN; ++i) std::memcpy(&r.p[i], x + i * C, sizeof r.p[i]);
  return r;
}
template <int C>
static R2M_INLINE void store(float* y, Vec<C> x) {
  for (int i = 0; i < Vec<C>::kN; ++i) std::memcpy(y + i * C, &x.p[i], sizeof x.p[i]);
}
template <int C>
static R2M_INLINE Vec<C> splat(float x) {
  Vec<C> r;
  for (int i = 0; i < Vec<C>::kN; ++i) r.p[i] = typename Vec<C>::P{} + x;
  return r;
}
template <int C>
static R2M_INLINE Vec<C> zero() {
  return splat<C>(0.0f);
}

#define R2M_LANEWISE(OP)                                                   \
  template <int C>                                                         \
  static R2M_INLINE Vec<C> operator OP(Vec<C> a, Vec<C> b) {               \
    for (int i = 0; i < Vec<C>::kN; ++i) a.p[i] = a.p[i] OP b.p[i];        \
    return a;                                                              \
  }                                                                        \
  template <int C>                                                         \
  static R2M_INLINE Vec<C> operator OP(Vec<C> a, float b) {                \
    for (int i = 0; i < Vec<C>::kN; ++i) a.p[i] = a.p[i] OP b;             \
    return a;                                                              \
  }
R2M_LANEWISE(+)
R2M_LANEWISE(-)
R2M_LANEWISE(*)
R2M_LANEWISE(/)
#undef R2M_LANEWISE
template <int C>
static R2M_INLINE Vec<C>& operator+=(Vec<C>& a, Vec<C> b) {
  return a = a + b;
}

// Lane-wise a > b ? a : b (b where either is NaN).
template <int C>
static R2M_INLINE Vec<C> vmax(Vec<C> a, Vec<C> b) {
  for (int i = 0; i < Vec<C>::kN; ++i) a.p[i] = a.p[i] > b.p[i] ? a.p[i] : b.p[i];
  return a;
}

#if defined(__clang__)
#define R2M_SWAP(C, x, ...) __builtin_shufflevector(x, x, __VA_ARGS__)
#else
#define R2M_SWAP(C, x, ...) __builtin_shuffle(x, typename Vec<C>::I{__VA_ARGS__})
#endif
// The sum of the 16 lanes by a butterfly: lane i adds lane i ^ 8, then i ^ 4, i ^ 2, i ^ 1 (pieces
// first, then lanes within a piece), and lane 0 holds the total: the same additions in the same
// order in every build.
template <int C>
static R2M_INLINE float hsum(Vec<C> x) {
  for (int d = Vec<C>::kN / 2; d >= 1; d /= 2)
    for (int i = 0; i < d; ++i) x.p[i] = x.p[i] + x.p[i + d];
  typename Vec<C>::P a = x.p[0];
  if constexpr (C == 16) {
    a += R2M_SWAP(16, a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    a += R2M_SWAP(16, a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    a += R2M_SWAP(16, a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    a += R2M_SWAP(16, a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  } else if constexpr (C == 8) {
    a += R2M_SWAP(8, a, 4, 5, 6, 7, 0, 1, 2, 3);
    a += R2M_SWAP(8, a, 2, 3, 0, 1, 6, 7, 4, 5);
    a += R2M_SWAP(8, a, 1, 0, 3, 2, 5, 4, 7, 6);
  } else {
    static_assert(C == 4, "16, 8 or 4 lanes a piece");
    a += R2M_SWAP(4, a, 2, 3, 0, 1);
    a += R2M_SWAP(4, a, 1, 0, 3, 2);
  }
  return a[0];
}
template <int C>
static R2M_INLINE float hmax(Vec<C> x) {
  float m = x.p[0][0];
  for (int l = 1; l < kW; ++l) m = x.p[l / C][l % C] > m ? x.p[l / C][l % C] : m;
  return m;
}

// e^x for x <= 0 (logits minus their max; -inf gives 0), lane by lane: Cody-Waite reduction to
// r in [-ln2/2, ln2/2] and Cephes' expf polynomial (relative error ~1e-7); below -87 it is 0.
template <int C>
static R2M_INLINE typename Vec<C>::P exp_nonpos(typename Vec<C>::P x) {
  typedef typename Vec<C>::P P;
  typedef typename Vec<C>::I I;
  const I under = x < -87.0f;
  x = under ? P{} - 87.0f : x;
  const P t = x * 1.44269504088896341f;
  const I ni = __builtin_convertvector(t - 0.5f, I);  // round to nearest (t <= 0)
  const P n = __builtin_convertvector(ni, P);
  const P r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  P p = P{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I bits = (ni + 127) << 23;
  P scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return under ? P{} : p * scale;
}
template <int C>
static R2M_INLINE Vec<C> exp_nonpos(Vec<C> x) {
  for (int i = 0; i < Vec<C>::kN; ++i) x.p[i] = exp_nonpos<C>(x.p[i]);
  return x;
}

// ---------------------------------------------------------------------------------------------
// Sampling.

// Elements per block of the two-level inverse-CDF search.
constexpr int64_t kBlock = 256;

// One row of logits x (V) at temperature t, the uniform u in [0, 1), `scratch` (V rounded up to
// the vector width): the draw from softmax(x / t), its log-prob and the distribution's entropy,
// without a (B, V) temporary. Pass 1: y = x / t and its max m; pass 2: e = exp(y - m) into
// scratch, each block's sum of e and of e (y - m); then log-prob = (y_tok - m) - log s and entropy
// = log s - sum e (y - m) / s with s = sum e. The draw is a two-level inverse-CDF search over e:
// the blocks' masses (summed in a fixed order) find the block where the cumulative mass first
// exceeds u x s, then a sequential f64 sum from the block's start finds the token (if rounding
// leaves that sum short of the target, the block's last token with weight is taken); zero-weight
// tokens are never drawn. NaN or +inf anywhere: token V - 1, NaN log-prob and entropy.
template <int C>
static R2M_INLINE void sample_row(const float* x, int64_t v, float t, double u, float* scratch, double* blocks, int64_t* tok,
                                  float* lp, float* ent) {
  const int64_t v_pad = (v + kW - 1) / kW * kW;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  Vec<C> mv = splat<C>(neg_inf);
  typename Vec<C>::I nan[Vec<C>::kN] = {};
  int64_t i = 0;
  for (; i + kW <= v; i += kW) {
    const Vec<C> y = load<C>(x + i) / t;
    store(scratch + i, y);
    mv = vmax(y, mv);
    for (int k = 0; k < Vec<C>::kN; ++k) nan[k] |= y.p[k] != y.p[k];
  }
  for (; i < v_pad; ++i) scratch[i] = i < v ? x[i] / t : neg_inf;
  float m = hmax<C>(mv);
  bool bad = false;
  for (int l = 0; l < kW; ++l) bad |= nan[l / C][l % C] != 0;
  for (i = v / kW * kW; i < v; ++i) {
    bad |= scratch[i] != scratch[i];
    m = scratch[i] > m ? scratch[i] : m;
  }
  bad |= !(m < std::numeric_limits<float>::infinity());
  const int64_t nb = (v + kBlock - 1) / kBlock;
  double s = 0.0, es = 0.0;
  if (!bad) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t lo = b * kBlock, hi = lo + kBlock < v_pad ? lo + kBlock : v_pad;
      Vec<C> acc = zero<C>(), eacc = zero<C>();
      for (int64_t j = lo; j < hi; j += kW) {
        const Vec<C> d = load<C>(scratch + j) - m;
        const Vec<C> e = exp_nonpos(d);
        store(scratch + j, e);
        acc += e;
        for (int k = 0; k < Vec<C>::kN; ++k)
          eacc.p[k] += e.p[k] > 0.0f ? e.p[k] * d.p[k] : typename Vec<C>::P{};
      }
      blocks[b] = hsum<C>(acc);
      s += blocks[b];
      es += hsum<C>(eacc);
    }
  }
  if (bad || !(s > 0.0)) {
    *tok = v - 1;
    *lp = std::numeric_limits<float>::quiet_NaN();
    *ent = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  const double log_s = std::log(s);
  const double target = u * s;
  double cum = 0.0;
  int64_t b = 0;
  for (; b < nb - 1; ++b) {
    if (cum + blocks[b] > target) break;
    cum += blocks[b];
  }
  const int64_t lo = b * kBlock, hi = lo + kBlock < v ? lo + kBlock : v;
  int64_t pick = -1, last = lo;
  for (int64_t j = lo; j < hi; ++j) {
    const double e = scratch[j];
    if (e > 0.0) last = j;
    cum += e;
    if (e > 0.0 && cum > target) {
      pick = j;
      break;
    }
  }
  if (pick < 0) pick = last;
  *tok = pick;
  *lp = static_cast<float>(static_cast<double>(x[pick] / t - m) - log_s);
  *ent = static_cast<float>(log_s - es / s);
}

// ---------------------------------------------------------------------------------------------
// Matrix-vector products.

// One row at a time, front to back: each thread reads its rows of the weight as one sequential
// stream, which the hardware prefetchers follow at close to the machine's read bandwidth. (Several
// rows side by side, each vector of x loaded once for all of them, makes as many streams 4-9 KB
// apart; on an AMD EPYC (Zen 4) that streamed about 20 % slower.) Four accumulators take every
// fourth vector, so that the additions do not wait on each other.
constexpr int64_t kAcc = 4;

// y[n] = w[n, :] . x (+ bias[n]) for the rows [n0, n1) of w (N, K) row-major. Each row's sum runs
// in the same order whichever thread computes it: the accumulators over whole groups of kAcc
// vectors, the remaining vectors into the first, the accumulators added pairwise, the lane sums'
// butterfly, then the tail elements in order.
template <int C>
static R2M_INLINE void matvec_rows(const float* w, const float* x, const float* bias, float* y, int64_t n0, int64_t n1,
                                   int64_t k) {
  const int64_t kv = k / kW * kW, kg = k / (kAcc * kW) * (kAcc * kW);
  for (int64_t n = n0; n < n1; ++n) {
    const float* wr = w + n * k;
    Vec<C> a0 = zero<C>(), a1 = zero<C>(), a2 = zero<C>(), a3 = zero<C>();
    int64_t i = 0;
    for (; i < kg; i += kAcc * kW) {
      a0 += load<C>(wr + i) * load<C>(x + i);
      a1 += load<C>(wr + i + kW) * load<C>(x + i + kW);
      a2 += load<C>(wr + i + 2 * kW) * load<C>(x + i + 2 * kW);
      a3 += load<C>(wr + i + 3 * kW) * load<C>(x + i + 3 * kW);
    }
    for (; i < kv; i += kW) a0 += load<C>(wr + i) * load<C>(x + i);
    float s = hsum<C>((a0 + a1) + (a2 + a3));
    for (; i < k; ++i) s += wr[i] * x[i];
    y[n] = bias != nullptr ? s + bias[n] : s;
  }
}

// ---------------------------------------------------------------------------------------------
// Attention of one decode step over the KV cache.

// One query token's attention for the `rep` query heads that share one key-value head: q (rep
// rows of hd, `q_hs` apart), keys and values (s slots of hd, `kv_ss` apart), `valid[j * m_ss]`:
// whether slot j is attended. Writes softmax(scale q k^T) v for each head into out (rep rows of
// hd, `hd` apart). Each key and value row is read once for all `rep` heads: pass 1 scores every
// slot (masked slots -inf), then e = exp(score - max) in place, summed per head in a fixed order;
// pass 2 adds e_j v_j into out and divides by the sum. `scores`: rep x s_pad floats. No valid
// slot at all: NaN, as softmax over -inf everywhere.
// Key rows prefetched ahead of the one being scored.
constexpr int64_t kAhead = 8;

template <int C>
static R2M_INLINE void attend_group(const float* q, int64_t q_hs, const float* k, const float* v, int64_t kv_ss,
                                    const bool* valid, int64_t m_ss, int64_t s, int64_t hd, int64_t rep, float scale,
                                    float* scores, float* out) {
  const int64_t s_pad = (s + kW - 1) / kW * kW, hv = hd / kW * kW;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < s_pad; ++j) {
    const bool on = j < s && valid[j * m_ss];
    const float* kj = k + j * kv_ss;
    // The rows ahead, and this slot's value row for pass 2: the cache streams from memory.
    if (j + kAhead < s)
      for (int64_t i = 0; i < hd; i += 16) __builtin_prefetch(kj + kAhead * kv_ss + i);
    if (on)
      for (int64_t i = 0; i < hd; i += 16) __builtin_prefetch(v + j * kv_ss + i);
    for (int64_t r = 0; r < rep; ++r) {
      float d = neg_inf;
      if (on) {
        const float* qr = q + r * q_hs;
        Vec<C> a = zero<C>();
        for (int64_t i = 0; i < hv; i += kW) a += load<C>(qr + i) * load<C>(kj + i);
        d = hsum<C>(a);
        for (int64_t i = hv; i < hd; ++i) d += qr[i] * kj[i];
        d *= scale;
      }
      scores[r * s_pad + j] = d;
    }
  }
  float inv[64];
  for (int64_t r = 0; r < rep; ++r) {
    float* e = scores + r * s_pad;
    Vec<C> mv = splat<C>(neg_inf);
    for (int64_t j = 0; j < s_pad; j += kW) {
      const Vec<C> x = load<C>(e + j);
      mv = vmax(x, mv);
    }
    const float m = hmax<C>(mv);
    Vec<C> acc = zero<C>();
    if (m > neg_inf) {
      for (int64_t j = 0; j < s_pad; j += kW) {
        const Vec<C> x = exp_nonpos(load<C>(e + j) - m);
        store(e + j, x);
        acc += x;
      }
    }
    const float sum = hsum<C>(acc);
    inv[r] = sum > 0.0f ? 1.0f / sum : std::numeric_limits<float>::quiet_NaN();
    std::memset(out + r * hd, 0, sizeof(float) * hd);
  }
  for (int64_t j = 0; j < s; ++j) {
    if (!valid[j * m_ss]) continue;
    const float* vj = v + j * kv_ss;
    for (int64_t r = 0; r < rep; ++r) {
      const float w = scores[r * s_pad + j];
      float* o = out + r * hd;
      const Vec<C> wv = splat<C>(w);
      for (int64_t i = 0; i < hv; i += kW) store(o + i, load<C>(o + i) + wv * load<C>(vj + i));
      for (int64_t i = hv; i < hd; ++i) o[i] += w * vj[i];
    }
  }
  for (int64_t r = 0; r < rep; ++r)
    for (int64_t i = 0; i < hd; ++i) out[r * hd + i] *= inv[r];
}

// ---------------------------------------------------------------------------------------------
// RMS norm.

// One row of d values: y = (x * r) * (w + add_one), r = 1 / sqrt(sum(x^2) / d + eps), as the
// decoder's RMSNorm computes in f32 (Gemma's scales by 1 + w: add_one = 1). The sum of squares
// runs in 16 lanes, then their butterfly, then the tail in order.
template <int C>
static R2M_INLINE void rms_row(const float* x, const float* w, float add_one, int64_t d, float eps, float* y) {
  const int64_t dv = d / kW * kW;
  Vec<C> a = zero<C>();
  for (int64_t i = 0; i < dv; i += kW) {
    const Vec<C> xv = load<C>(x + i);
    a += xv * xv;
  }
  float ss = hsum<C>(a);
  for (int64_t i = dv; i < d; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  const Vec<C> rv = splat<C>(r), one = splat<C>(add_one);
  for (int64_t i = 0; i < dv; i += kW) store(y + i, (load<C>(x + i) * rv) * (load<C>(w + i) + one));
  for (int64_t i = dv; i < d; ++i) y[i] = (x[i] * r) * (w[i] + add_one);
}

// ---------------------------------------------------------------------------------------------
// RoPE and the gated MLP's activation.

// One head's row of hd values turned by RoPE over its first rot dims (cos, sin: rot values, the
// two halves equal): y = x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1), the rest passes
// through. The same roundings as the tensor ops (x cos, then + (-x2 sin)): the same bits.
template <int C>
static R2M_INLINE void rope_row(const float* x, const float* c, const float* sn, int64_t rot, int64_t hd, float* y) {
  const int64_t half = rot / 2, hv = half / kW * kW;
  for (int64_t i = 0; i < hv; i += kW) {
    const Vec<C> x1 = load<C>(x + i), x2 = load<C>(x + half + i);
    store(y + i, x1 * load<C>(c + i) - x2 * load<C>(sn + i));
    store(y + half + i, x2 * load<C>(c + half + i) + x1 * load<C>(sn + half + i));
  }
  for (int64_t i = hv; i < half; ++i) {
    const float x1 = x[i], x2 = x[half + i];
    y[i] = x1 * c[i] - x2 * sn[i];
    y[half + i] = x2 * c[half + i] + x1 * sn[half + i];
  }
  for (int64_t i = rot; i < hd; ++i) y[i] = x[i];
}

// silu(g) u over n values: silu(g) = g / (1 + e^-g), e^-g from exp_nonpos (for g < 0 as
// g e^g / (e^g + 1)).
template <int C>
static R2M_INLINE void silu_mul_row(const float* g, const float* u, int64_t n, float* y) {
  const int64_t nv = n / kW * kW;
  typedef typename Vec<C>::P P;
  for (int64_t i = 0; i < nv; i += kW) {
    const Vec<C> x = load<C>(g + i), ui = load<C>(u + i);
    Vec<C> out;
    for (int k = 0; k < Vec<C>::kN; ++k) {
      const P xk = x.p[k];
      const auto neg = xk < 0.0f;
      const P e = exp_nonpos<C>(neg ? xk : -xk);
      const P s = neg ? xk * e / (e + 1.0f) : xk / (e + 1.0f);
      out.p[k] = s * ui.p[k];
    }
    store(y + i, out);
  }
  for (int64_t i = nv; i < n; ++i) {
    const float x = g[i];
    const float e = std::exp(x < 0.0f ? x : -x);
    y[i] = (x < 0.0f ? x * e / (e + 1.0f) : x / (e + 1.0f)) * u[i];
  }
}

// ---------------------------------------------------------------------------------------------
// The three builds of each kernel and the pick between them.

#define R2M_KERNELS(SUFFIX, TARGET, C)                                                                                  \
  TARGET static void sample_rows_##SUFFIX(const float* x, float t, const double* u, int64_t b0, int64_t b1, int64_t v,  \
                                          float* scratch, double* blocks, int64_t* tok, float* lp, float* ent) {        \
    for (int64_t b = b0; b < b1; ++b) sample_row<C>(x + b * v, v, t, u[b], scratch, blocks, tok + b, lp + b, ent + b);  \
  }                                                                                                                     \
  TARGET static void matvec_rows_##SUFFIX(const float* w, const float* x, const float* bias, float* y, int64_t n0,      \
                                          int64_t n1, int64_t k) {                                                      \
    matvec_rows<C>(w, x, bias, y, n0, n1, k);                                                                           \
  }                                                                                                                     \
  TARGET static void rms_rows_##SUFFIX(const float* x, const float* w, float add_one, int64_t r0, int64_t r1, int64_t d, \
                                       float eps, float* y) {                                                           \
    for (int64_t r = r0; r < r1; ++r) rms_row<C>(x + r * d, w, add_one, d, eps, y + r * d);                             \
  }                                                                                                                     \
  TARGET static void rope_rows_##SUFFIX(const float* x, const int64_t* x_st, const float* c, const float* sn,           \
                                        int64_t r0, int64_t r1, int64_t h, int64_t t, int64_t rot, int64_t hd,          \
                                        float* y) {                                                                     \
    for (int64_t r = r0; r < r1; ++r) {                                                                                 \
      const int64_t b = r / (h * t), hi = r / t % h, ti = r % t;                                                        \
      const int64_t tab = (b * t + ti) * rot;                                                                           \
      rope_row<C>(x + b * x_st[0] + hi * x_st[1] + ti * x_st[2], c + tab, sn + tab, rot, hd, y + r * hd);               \
    }                                                                                                                   \
  }                                                                                                                     \
  TARGET static void silu_mul_rows_##SUFFIX(const float* g, int64_t g_rs, const float* u, int64_t u_rs, int64_t r0,     \
                                            int64_t r1, int64_t n, float* y) {                                          \
    for (int64_t r = r0; r < r1; ++r) silu_mul_row<C>(g + r * g_rs, u + r * u_rs, n, y + r * n);                        \
  }                                                                                                                     \
  TARGET static void attend_groups_##SUFFIX(const float* q, const int64_t* q_st, const float* k, const float* v,        \
                                            const int64_t* kv_st, const bool* m, const int64_t* m_st, int64_t g0,       \
                                            int64_t g1, int64_t nkv, int64_t s, int64_t hd, int64_t rep, float scale,   \
                                            float* scores, float* out) {                                                \
    for (int64_t g = g0; g < g1; ++g) {                                                                                 \
      const int64_t b = g / nkv, h = g % nkv;                                                                           \
      attend_group<C>(q + b * q_st[0] + h * rep * q_st[1], q_st[1], k + b * kv_st[0] + h * kv_st[1],                    \
                   v + b * kv_st[2] + h * kv_st[3], kv_st[4], m + b * m_st[0], m_st[1], s, hd, rep, scale, scores,      \
                   out + g * rep * hd);                                                                                 \
    }                                                                                                                   \
  }
#if defined(__x86_64__)
R2M_KERNELS(avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512"))), 16)
R2M_KERNELS(avx2, __attribute__((target("avx2,fma"))), 8)
#endif
R2M_KERNELS(baseline, , 4)

enum Level { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Calls the build of kernel NAME for level `lev` (a statement; returns from the enclosing lambda).
#if defined(__x86_64__)
#define R2M_DISPATCH(lev, NAME, ...)                       \
  do {                                                     \
    if ((lev) == kAvx512) return NAME##_avx512(__VA_ARGS__); \
    if ((lev) == kAvx2) return NAME##_avx2(__VA_ARGS__);     \
    return NAME##_baseline(__VA_ARGS__);                   \
  } while (0)
#else
#define R2M_DISPATCH(lev, NAME, ...) return NAME##_baseline(__VA_ARGS__)
#endif

static Level detect() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  Level best = kBaseline;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    best = kAvx512;
  const char* forced = std::getenv("R2M_CPU_KERNELS");
  if (forced != nullptr) {
    const std::string f(forced);
    if (f == "baseline") return kBaseline;
    if (f == "avx2" && best >= kAvx2) return kAvx2;
  }
  return best;
#else
  return kBaseline;
#endif
}

static Level level() {
  static const Level l = detect();
  return l;
}

// `want`: -1 for the CPU's best, else a level (0 baseline, 1 AVX2, 2 AVX-512) capped at the best.
static Level pick_level(int want) {
  const Level best = level();
  return want < 0 || want > static_cast<int>(best) ? best : static_cast<Level>(want);
}

extern "C" const char* r2m_decode_kernels() {
  switch (level()) {
    case kAvx512: return "avx512";
    case kAvx2: return "avx2";
    default: return "baseline";
  }
}

// logits: (B, V) f32, sampled at `temperature` with the uniforms u (B) f64; `want`: the build
// (pick_level). Writes tokens (B) int64, their log-probs and the entropies (B) f32.
extern "C" int r2m_sample_logits(at::Tensor* logits, double temperature, at::Tensor* u, int want, at::Tensor** tok,
                                 at::Tensor** lp, at::Tensor** ent, char* err, size_t err_len) {
  return guarded(
      [&] {
        TORCH_CHECK(logits->dim() == 2 && logits->scalar_type() == at::kFloat && logits->device().is_cpu(),
                    "sample_logits: logits must be (B, V) f32 on the CPU");
        TORCH_CHECK(u->scalar_type() == at::kDouble && temperature > 0.0, "sample_logits: f64 u, temperature > 0");
        const at::Tensor x = logits->contiguous(), uu = u->contiguous();
        const int64_t b = x.size(0), v = x.size(1);
        TORCH_CHECK(uu.numel() == b && v > 0, "sample_logits: one draw per row");
        at::Tensor t = at::empty({b}, x.options().dtype(at::kLong));
        at::Tensor lps = at::empty({b}, x.options());
        at::Tensor ents = at::empty({b}, x.options());
        const float* xp = x.data_ptr<float>();
        const double* up = uu.data_ptr<double>();
        int64_t* tp = t.data_ptr<int64_t>();
        float *lo = lps.data_ptr<float>(), *eo = ents.data_ptr<float>();
        const float temp = static_cast<float>(temperature);
        const Level lev = pick_level(want);
        at::parallel_for(0, b, 1, [&](int64_t b0, int64_t b1) {
          std::vector<float> scratch((v + kW - 1) / kW * kW);
          std::vector<double> blocks((v + kBlock - 1) / kBlock);
          R2M_DISPATCH(lev, sample_rows, xp, temp, up, b0, b1, v, scratch.data(), blocks.data(), tp, lo, eo);
        });
        *tok = new at::Tensor(t);
        *lp = new at::Tensor(lps);
        *ent = new at::Tensor(ents);
      },
      "sample_logits", err, err_len);
}

// Whether generation at batch 1 uses r2m_matvec rather than libtorch's product (MKL's gemv) on this
// CPU: where measured faster. On an AMD EPYC (Zen 4) r2m_matvec streams a decode step's weights at
// 27-30 GB/s against MKL's 14-19; on Intel Xeons MKL's gemv already reaches about 80 % of the
// memory bandwidth, and MKL keeps the product there. Needs the AVX2 or AVX-512 build.
// R2M_MATVEC=r2m or =mkl chooses either way.
extern "C" int r2m_matvec_preferred() {
  const char* forced = std::getenv("R2M_MATVEC");
  if (forced != nullptr && std::strcmp(forced, "r2m") == 0) return 1;
  if (forced != nullptr && std::strcmp(forced, "mkl") == 0) return 0;
#if defined(__x86_64__)
  __builtin_cpu_init();
  return level() >= kAvx2 && __builtin_cpu_is("amd") ? 1 : 0;
#else
  return 0;
#endif
}

// y = x [w_0; w_1; ...]^T (+ [bias_0; bias_1; ...]) for one input row and `count` weights that
// take the same input (q, k and v; gate and up): x holds K elements (any shape), each w_j is
// (N_j, K) and bias_j (N_j) or null, all f32 on the CPU; `want`: the build (pick_level). Writes y
// (N_0 + N_1 + ...) f32, the products side by side. One parallel region covers every row of every
// weight: each thread streams its share once, with no fork and join between the weights.
extern "C" int r2m_matvec(at::Tensor* x, at::Tensor** ws, at::Tensor** biases, int count, int want, at::Tensor** out,
                          char* err, size_t err_len) {
  return guarded(
      [&] {
        TORCH_CHECK(count >= 1, "matvec: no weight given");
        TORCH_CHECK(x->scalar_type() == at::kFloat && x->device().is_cpu(), "matvec: the input must be f32 on the CPU");
        const int64_t k = x->numel();
        std::vector<at::Tensor> wc(count), bc(count);
        std::vector<int64_t> first(count + 1, 0);
        for (int j = 0; j < count; ++j) {
          const at::Tensor& w = *ws[j];
          TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.device().is_cpu(),
                      "matvec: weight ", j, " must be (N, K) f32 on the CPU");
          TORCH_CHECK(w.size(1) == k, "matvec: the input must be one row of ", w.size(1),
                      " f32 values (weight ", j, "'s K), not ", x->sizes());
          const int64_t n = w.size(0);
          TORCH_CHECK(biases[j] == nullptr || (biases[j]->scalar_type() == at::kFloat && biases[j]->device().is_cpu() &&
                                               biases[j]->numel() == n),
                      "matvec: bias ", j, " must hold ", n, " f32 values on the CPU");
          wc[j] = w.contiguous();
          if (biases[j] != nullptr) bc[j] = biases[j]->contiguous();
          first[j + 1] = first[j] + n;
        }
        const at::Tensor xc = x->contiguous();
        at::Tensor y = at::empty({first[count]}, xc.options());
        const float* xp = xc.data_ptr<float>();
        float* yp = y.data_ptr<float>();
        const Level lev = pick_level(want);
        // Chunks of at least 64 rows, over the weights' rows end to end.
        at::parallel_for(0, first[count], 64, [&](int64_t r0, int64_t r1) {
          for (int j = 0; j < count; ++j) {
            const int64_t n0 = std::max(r0, first[j]), n1 = std::min(r1, first[j + 1]);
            if (n0 >= n1) continue;
            const float* bp = bc[j].defined() ? bc[j].data_ptr<float>() : nullptr;
            // Rows [n0, n1) of the whole are this weight's rows from n0 - first[j] (R2M_DISPATCH
            // returns: one call per lambda).
            [&] { R2M_DISPATCH(lev, matvec_rows, wc[j].data_ptr<float>(), xp, bp, yp + first[j], n0 - first[j], n1 - first[j], k); }();
          }
        });
        *out = new at::Tensor(y);
      },
      "matvec", err, err_len);
}

// Attention of one decode step: q (B, nh, 1, hd), the cache's keys and values (B, nkv, S, hd)
// (any strides with unit stride along hd: views of a longer cache), valid (B, 1, 1, S) bool (true
// = attend), all f32 on the CPU; nh a multiple of nkv (GQA), scale > 0; `want`: the build
// (pick_level). Writes softmax(scale q k^T) v as (B, 1, nh * hd), each head's hd values side by
// side: the layout the output projection takes. (B, kv head) pairs are spread over ATen's
// threads; each is computed sequentially, so values do not depend on the thread count.
extern "C" int r2m_decode_attention(at::Tensor* q, at::Tensor* k, at::Tensor* v, at::Tensor* valid, double scale,
                                    int want, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        const auto f32cpu = [](const at::Tensor* t) { return t->scalar_type() == at::kFloat && t->device().is_cpu(); };
        TORCH_CHECK(q->dim() == 4 && k->dim() == 4 && v->dim() == 4 && f32cpu(q) && f32cpu(k) && f32cpu(v),
                    "decode_attention: q, k and v must be 4-dim f32 on the CPU");
        const int64_t b = q->size(0), nh = q->size(1), hd = q->size(3), nkv = k->size(1), s = k->size(2);
        TORCH_CHECK(q->size(2) == 1, "decode_attention: one query token, not ", q->size(2));
        TORCH_CHECK(k->sizes() == v->sizes() && k->size(0) == b && k->size(3) == hd && nkv > 0 && nh % nkv == 0,
                    "decode_attention: q ", q->sizes(), " with k ", k->sizes(), " and v ", v->sizes());
        TORCH_CHECK(k->stride(3) == 1 && v->stride(3) == 1 && k->stride(2) == v->stride(2),
                    "decode_attention: keys and values need unit stride along hd and the same slot stride");
        TORCH_CHECK(valid->scalar_type() == at::kBool && valid->device().is_cpu() && valid->dim() == 4 &&
                        valid->size(0) == b && valid->size(1) == 1 && valid->size(2) == 1 && valid->size(3) == s,
                    "decode_attention: the mask must be (B, 1, 1, S) bool on the CPU, not ", valid->sizes());
        TORCH_CHECK(scale > 0.0, "decode_attention: scale must be > 0");
        const int64_t rep = nh / nkv;
        TORCH_CHECK(rep <= 64, "decode_attention: at most 64 query heads per key-value head, not ", rep);
        const at::Tensor qc = q->contiguous();
        at::Tensor y = at::empty({b, 1, nh * hd}, qc.options());
        const int64_t q_st[2] = {qc.stride(0), qc.stride(1)};
        const int64_t kv_st[5] = {k->stride(0), k->stride(1), v->stride(0), v->stride(1), k->stride(2)};
        const int64_t m_st[2] = {valid->stride(0), valid->stride(3)};
        const float *qp = qc.data_ptr<float>(), *kp = k->data_ptr<float>(), *vp = v->data_ptr<float>();
        const bool* mp = valid->data_ptr<bool>();
        float* yp = y.data_ptr<float>();
        const float sc = static_cast<float>(scale);
        const Level lev = pick_level(want);
        const int64_t s_pad = (s + kW - 1) / kW * kW;
        at::parallel_for(0, b * nkv, 1, [&](int64_t g0, int64_t g1) {
          std::vector<float> scores(rep * s_pad);
          R2M_DISPATCH(lev, attend_groups, qp, q_st, kp, vp, kv_st, mp, m_st, g0, g1, nkv, s, hd, rep, sc, scores.data(), yp);
        });
        *out = new at::Tensor(y);
      },
      "decode_attention", err, err_len);
}

// RMS norm over the last dimension of x (any shape, d = its last size) with the weight w (d):
// (x * r) * (w + add_one) per row, r = 1 / sqrt(mean(x^2) + eps); f32 on the CPU; `want`: the
// build (pick_level). Rows are spread over ATen's threads; each row is computed sequentially.
extern "C" int r2m_rms_norm(at::Tensor* x, at::Tensor* w, double eps, int add_one, int want, at::Tensor** out,
                            char* err, size_t err_len) {
  return guarded(
      [&] {
        TORCH_CHECK(x->dim() >= 1 && x->scalar_type() == at::kFloat && x->device().is_cpu() &&
                        w->scalar_type() == at::kFloat && w->device().is_cpu(),
                    "rms_norm: x and the weight must be f32 on the CPU");
        const int64_t d = x->size(-1);
        TORCH_CHECK(w->dim() == 1 && w->size(0) == d, "rms_norm: the weight must hold ", d, " values, not ", w->sizes());
        const at::Tensor xc = x->contiguous(), wc = w->contiguous();
        at::Tensor y = at::empty(xc.sizes(), xc.options());
        const int64_t rows = d > 0 ? xc.numel() / d : 0;
        const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
        float* yp = y.data_ptr<float>();
        const float e = static_cast<float>(eps), one = add_one != 0 ? 1.0f : 0.0f;
        const Level lev = pick_level(want);
        at::parallel_for(0, rows, 4096 / (d > 0 ? d : 1) + 1, [&](int64_t r0, int64_t r1) {
          R2M_DISPATCH(lev, rms_rows, xp, wp, one, r0, r1, d, e, yp);
        });
        *out = new at::Tensor(y);
      },
      "rms_norm", err, err_len);
}

// RoPE on x (B, h, T, hd) (any strides with unit stride along hd) with cos and sin (B, 1, T, rot)
// (rot even, <= hd), all f32 on the CPU; `want`: the build (pick_level). Writes the turned
// (B, h, T, hd), contiguous, with the bits of the tensor ops x cos + rotate_half(x) sin.
extern "C" int r2m_rope(at::Tensor* x, at::Tensor* cos, at::Tensor* sin, int want, at::Tensor** out, char* err,
                        size_t err_len) {
  return guarded(
      [&] {
        const auto f32cpu = [](const at::Tensor* t) { return t->scalar_type() == at::kFloat && t->device().is_cpu(); };
        TORCH_CHECK(x->dim() == 4 && f32cpu(x) && f32cpu(cos) && f32cpu(sin) && x->stride(3) == 1,
                    "rope: x must be (B, h, T, hd) f32 on the CPU with unit stride along hd");
        const int64_t b = x->size(0), h = x->size(1), t = x->size(2), hd = x->size(3), rot = cos->size(-1);
        TORCH_CHECK(cos->sizes() == sin->sizes() && cos->dim() == 4 && cos->size(0) == b && cos->size(1) == 1 &&
                        cos->size(2) == t && rot % 2 == 0 && rot <= hd,
                    "rope: cos and sin must be (B, 1, T, rot) for x ", x->sizes(), ", not ", cos->sizes());
        const at::Tensor cc = cos->contiguous(), sc = sin->contiguous();
        at::Tensor y = at::empty({b, h, t, hd}, x->options().memory_format(at::MemoryFormat::Contiguous));
        const int64_t x_st[3] = {x->stride(0), x->stride(1), x->stride(2)};
        const float *xp = x->data_ptr<float>(), *cp = cc.data_ptr<float>(), *sp = sc.data_ptr<float>();
        float* yp = y.data_ptr<float>();
        const Level lev = pick_level(want);
        at::parallel_for(0, b * h * t, 4096 / (hd > 0 ? hd : 1) + 1, [&](int64_t r0, int64_t r1) {
          R2M_DISPATCH(lev, rope_rows, xp, x_st, cp, sp, r0, r1, h, t, rot, hd, yp);
        });
        *out = new at::Tensor(y);
      },
      "rope", err, err_len);
}

// silu(g) u for g and u of the same shape (..., n), f32 on the CPU, each a stack of rows with one
// row stride and unit stride along n (the halves of a fused gate-up projection are); `want`: the
// build (pick_level). Writes a contiguous tensor of that shape.
extern "C" int r2m_silu_mul(at::Tensor* g, at::Tensor* u, int want, at::Tensor** out, char* err, size_t err_len) {
  return guarded(
      [&] {
        const auto f32cpu = [](const at::Tensor* t) { return t->scalar_type() == at::kFloat && t->device().is_cpu(); };
        TORCH_CHECK(f32cpu(g) && f32cpu(u) && g->sizes() == u->sizes() && g->dim() >= 1,
                    "silu_mul: g and u must be f32 on the CPU, of one shape");
        const int64_t n = g->size(-1);
        const at::Tensor g2 = g->reshape({-1, n}), u2 = u->reshape({-1, n});
        TORCH_CHECK(g2.stride(1) == 1 && u2.stride(1) == 1, "silu_mul: unit stride along the last dimension");
        const int64_t rows = g2.size(0), g_rs = g2.stride(0), u_rs = u2.stride(0);
        at::Tensor y = at::empty(g->sizes(), g->options().memory_format(at::MemoryFormat::Contiguous));
        const float *gp = g2.data_ptr<float>(), *up = u2.data_ptr<float>();
        float* yp = y.data_ptr<float>();
        const Level lev = pick_level(want);
        at::parallel_for(0, rows, 4096 / (n > 0 ? n : 1) + 1, [&](int64_t r0, int64_t r1) {
          R2M_DISPATCH(lev, silu_mul_rows, gp, g_rs, up, u_rs, r0, r1, n, yp);
        });
        *out = new at::Tensor(y);
      },
      "silu_mul", err, err_len);
}
