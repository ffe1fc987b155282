// Fused XLA:CPU kernels for the Dice core and the marginal cross-entropy (jax.ffi custom calls).
//
// The math is that of labelset_jax/losses/{dice,marginal,_common}.py, written per voxel from the
// membership matrix M [K, C] and the set sizes |g| [K] of a LabelSpace (the same algebra: no loss
// is re-derived here, only the maps Φ_g, Φ and 1[g = {c}] are evaluated on one voxel at a time):
//
//   p      = softmax(z)                                 (max-shifted, one exp per element)
//   p̂      = p, or Φ_g(p) = (Σ_{c'} m_c' p_c') / |g| on the set, p elsewhere   (marginal)
//   t      = m * 1[|g| = 1]  (leaf target)  or  m / |g|  (one-hot / uniform target Φ(g))
//
//   LsDiceSums  S^pt_c = Σ_i p̂_ic t_ic,  S^pp_c = Σ_i p̂_ic^α,  S^tt_c = Σ_i t_ic^α   -> [3, B, C]
//   LsDiceGrad  d = a t + b α p̂^{α-1};  d = Φ_g(d) (marginal);  ∂L/∂z = p (d - Σ_c p_c d_c)
//   LsMceLoss   Σ_i -log Σ_{c ∈ g_i} p_ic                                             -> [B]
//   LsMceGrad   ∂/∂z_c = scale_b (p_c - m_c p_c / Σ_{c' ∈ g} p_c')
//
// One pass over the logits each: the forward kernels read them once and write [B, C] / [B]; the
// gradient kernels read them once more (recomputing the softmax: cheaper here than storing it, see
// benchmarks/RESULTS.md) and write the gradient. Voxels are processed in blocks of kLanes,
// channel-major in vector registers (GCC/Clang vector extensions) so arithmetic is vectorised
// across voxels; exp and log are polynomial (Cephes, ~1 ulp) so they vectorise too. Work is split
// in fixed chunks over XLA's intra-op thread pool; partial sums are kept per chunk and added in
// chunk order, so results do not depend on the number of threads.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;           // voxels per block (one AVX-512 register of float32)
constexpr int kMaxClasses = 32;      // larger C falls back to the pure-JAX path (checked in Python)
constexpr int64_t kChunk = 4096;     // voxels per work item and per float32 partial sum

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define LS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LS_CLONES
#endif
#define LS_INLINE inline __attribute__((always_inline))

// GCC/Clang vector extensions: one value per voxel of a block, lowered to AVX-512, AVX2 or SSE.
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

LS_INLINE vf splat(float x) { return vf{} + x; }
LS_INLINE vf vmax(vf a, vf b) { return a < b ? b : a; }  // a NaN in `a` propagates
LS_INLINE vf select(vi mask, vf a, vf b) { return mask ? a : b; }

// ------------------------------------------------------------------ vectorised exp and log
LS_INLINE vf exp_v(vf x) {
  // exp(x) for x <= 0 (arguments are z - max z), Cephes expf; clamped so 2^n stays normal.
  // NaN (from NaN or infinite logits) propagates, as in XLA's exp.
  x = select(x < -87.0f, splat(-87.0f), x);
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding and removing it rounds to nearest
  const vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * __builtin_bit_cast(vf, bits);
}

LS_INLINE vf log_v(vf x) {
  // log(x) for normal positive x (Cephes logf): x = 2^e * m, m in [sqrt(1/2), sqrt(2)).
  vi bits = __builtin_bit_cast(vi, x);
  vi e = ((bits >> 23) & 0xff) - 126;
  bits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  vf m = __builtin_bit_cast(vf, bits);
  const vi small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = select(small, m + m - 1.0f, m - 1.0f);
  const vf z = m * m;
  vf y = splat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const vf fe = __builtin_convertvector(e, vf);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return select(x == x, m + y + 0.693359375f * fe, x);  // NaN propagates
}

// ------------------------------------------------------------------ one block of voxels
struct Problem {
  const float* z;         // [B, N, C] logits
  const int32_t* g;       // [B, N]
  const uint32_t* bits;   // [K]: bit c set when leaf c is in set k (the membership matrix, packed)
  const float* size;      // [K]
  int64_t batch, n, c, k;
};

// Channel-major copy of up to kLanes voxels: membership rows, set sizes, lane weights, logits.
struct Block {
  vf m[kMaxClasses];
  vf z[kMaxClasses];
  vf size;
  vf w;
};

LS_INLINE void load_labels(const Problem& pb, int64_t b, int64_t i0, int nv, Block& blk) {
  const int32_t* g = pb.g + b * pb.n + i0;
  vi bits = vi{};
  blk.size = splat(1.0f);
  blk.w = vf{};
  for (int v = 0; v < nv; ++v) {
    int32_t id = g[v];
    id = id < 0 ? 0 : (id >= pb.k ? static_cast<int32_t>(pb.k - 1) : id);  // bounds only
    bits[v] = static_cast<int32_t>(pb.bits[id]);
    blk.size[v] = pb.size[id];
    blk.w[v] = 1.0f;
  }
  for (int64_t c = 0; c < pb.c; ++c)
    blk.m[c] = __builtin_convertvector((bits >> static_cast<int>(c)) & 1, vf);
}

LS_INLINE void load_logits(const Problem& pb, int64_t b, int64_t i0, int nv, Block& blk) {
  const int64_t C = pb.c;
  const float* z = pb.z + (b * pb.n + i0) * C;
  for (int64_t c = 0; c < C; ++c) {
    vf x;
    for (int v = 0; v < kLanes; ++v) x[v] = v < nv ? z[v * C + c] : 0.0f;
    blk.z[c] = x;
  }
}

// Writes a channel-major block to the voxel-major [nv, C] layout.
LS_INLINE void store_voxel_major(const vf* x, int64_t C, int nv, float* out) {
  for (int v = 0; v < nv; ++v)
    for (int64_t c = 0; c < C; ++c) out[v * C + c] = x[c][v];
}

// e = exp(z - max z) per element and sum = Σ_c e.
LS_INLINE void block_exp(const Block& blk, int64_t C, vf* e, vf& sum) {
  vf mx = blk.z[0];
  for (int64_t c = 1; c < C; ++c) mx = vmax(mx, blk.z[c]);
  sum = vf{};
  for (int64_t c = 0; c < C; ++c) {
    e[c] = exp_v(blk.z[c] - mx);
    sum += e[c];
  }
}

struct DiceMode {
  bool marginal, leaf, squared;
};

// p̂ and t of one block from p and the membership rows, channel-major.
LS_INLINE void dice_maps(const Block& blk, int64_t C, DiceMode mode, const vf* p, vf* pred, vf* t) {
  if (mode.marginal) {
    vf set_mass = vf{};
    for (int64_t c = 0; c < C; ++c) set_mass += p[c] * blk.m[c];
    set_mass /= blk.size;
    for (int64_t c = 0; c < C; ++c) pred[c] = select(blk.m[c] > 0.0f, set_mass, p[c]);
  } else {
    for (int64_t c = 0; c < C; ++c) pred[c] = p[c];
  }
  if (mode.leaf) {
    const vi single = blk.size == 1.0f;
    for (int64_t c = 0; c < C; ++c) t[c] = select(single, blk.m[c], vf{});
  } else {
    const vf inv_size = 1.0f / blk.size;
    for (int64_t c = 0; c < C; ++c) t[c] = blk.m[c] * inv_size;
  }
}

// ------------------------------------------------------------------ chunked parallel driver
// Runs fn(chunk) for every chunk on the caller and on up to (threads - 1) pool tasks. Chunks are
// claimed through an atomic counter, so the caller finishes the work alone if the pool is busy.
template <typename F>
void parallel_chunks(ffi::ThreadPool& pool, int64_t num_chunks, F fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, num_chunks, fn]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1);
      if (i >= num_chunks) return;
      fn(i);
      if (state->done.fetch_add(1) + 1 == num_chunks) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_chunks) - 1;
  for (int64_t h = 0; h < helpers; ++h) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == num_chunks; });
}

// Maps in the pages of an output range before it is written. XLA:CPU hands each call a freshly
// mapped output buffer, and faulting it in one 4 KiB page at a time is slower than mapping the
// range of a work item in one MADV_POPULATE_WRITE call (Linux >= 5.14) on the thread that then
// writes it (benchmarks/RESULTS.md). Advisory: errors (older kernels) are ignored and the pages
// fault in as usual. (MADV_HUGEPAGE was measured 4x slower here: synchronous compaction.)
void populate(float* begin, float* end) {
#if defined(__linux__)
  constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, missing from older headers
  constexpr uintptr_t kPage = 4096;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(begin) + kPage - 1) & ~(kPage - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(end) & ~(kPage - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, kPopulateWrite);
#else
  (void)begin;
  (void)end;
#endif
}

// Runs chunk(b, start, stop, j) over all samples in work items of kChunk voxels.
template <typename F>
void for_chunks(ffi::ThreadPool& pool, const Problem& pb, F chunk) {
  const int64_t per_sample = (pb.n + kChunk - 1) / kChunk;
  parallel_chunks(pool, pb.batch * per_sample, [&](int64_t j) {
    const int64_t b = j / per_sample, start = (j % per_sample) * kChunk;
    chunk(b, start, std::min(pb.n, start + kChunk), j);
  });
}

int64_t num_chunks(const Problem& pb) { return pb.batch * ((pb.n + kChunk - 1) / kChunk); }

// Validates the shapes shared by all kernels and packs the membership rows into bit masks.
ffi::ErrorOr<Problem> make_problem(ffi::Buffer<ffi::F32>& logits, ffi::Buffer<ffi::S32>& labels,
                                   ffi::Buffer<ffi::F32>& mem, ffi::Buffer<ffi::F32>& size,
                                   std::vector<uint32_t>& bits) {
  auto zd = logits.dimensions();
  auto gd = labels.dimensions();
  auto md = mem.dimensions();
  if (zd.size() != 3 || gd.size() != 2 || md.size() != 2 || size.dimensions().size() != 1)
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "labelset_jax kernels: expected logits [B,N,C], labels [B,N], membership [K,C], sizes [K]"));
  if (gd[0] != zd[0] || gd[1] != zd[1] || md[1] != zd[2] || size.dimensions()[0] != md[0])
    return ffi::Unexpected(ffi::Error::InvalidArgument("labelset_jax kernels: inconsistent shapes"));
  if (zd[2] < 1 || zd[2] > kMaxClasses || md[0] < 1)
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("labelset_jax kernels: need 1 <= C <= 32 and K >= 1"));
  const int64_t K = md[0], C = zd[2];
  const float* m = mem.typed_data();
  bits.assign(K, 0u);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      if (m[k * C + c] > 0.0f) bits[k] |= 1u << c;
  return Problem{logits.typed_data(), labels.typed_data(), bits.data(), size.typed_data(),
                 zd[0], zd[1], C, K};
}

ffi::Error check_coefficients(const Problem& pb, ffi::Buffer<ffi::F32>& x, int64_t per_sample,
                              const char* what) {
  if (x.element_count() != static_cast<size_t>(pb.batch * per_sample))
    return ffi::Error::InvalidArgument(std::string("labelset_jax kernels: wrong shape of ") + what);
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ Dice
// Softmax of one block (channel-major).
LS_INLINE void block_softmax(const Block& blk, int64_t C, vf* p) {
  vf sum;
  block_exp(blk, C, p, sum);
  const vf inv = 1.0f / sum;
  for (int64_t c = 0; c < C; ++c) p[c] *= inv;
}

// Per-class sums of one work item (float32 lanes, then double).
LS_CLONES void dice_sums_chunk(const Problem& pb, DiceMode mode, int64_t b, int64_t start,
                               int64_t stop, double* out /* [3, C] */) {
  const int64_t C = pb.c;
  Block blk;
  vf p[kMaxClasses], pred[kMaxClasses], t[kMaxClasses];
  vf acc[3][kMaxClasses];
  for (int s = 0; s < 3; ++s)
    for (int64_t c = 0; c < C; ++c) acc[s][c] = vf{};
  for (int64_t i = start; i < stop; i += kLanes) {
    const int nv = static_cast<int>(std::min<int64_t>(kLanes, stop - i));
    load_labels(pb, b, i, nv, blk);
    load_logits(pb, b, i, nv, blk);
    block_softmax(blk, C, p);
    dice_maps(blk, C, mode, p, pred, t);
    for (int64_t c = 0; c < C; ++c) {
      const vf q = pred[c] * blk.w, tt = t[c];  // padding lanes: w = 0 and t = 0
      acc[0][c] += q * tt;
      acc[1][c] += mode.squared ? q * pred[c] : q;
      acc[2][c] += mode.squared ? tt * tt : tt;
    }
  }
  for (int s = 0; s < 3; ++s)
    for (int64_t c = 0; c < C; ++c) {
      double total = 0.0;
      for (int v = 0; v < kLanes; ++v) total += acc[s][c][v];
      out[s * C + c] = total;
    }
}

// Gradient of one work item, recomputing the softmax from the logits.
LS_CLONES void dice_grad_chunk(const Problem& pb, DiceMode mode, const float* a, const float* bb,
                               int64_t b, int64_t start, int64_t stop, float* dz) {
  const int64_t C = pb.c;
  Block blk;
  vf p[kMaxClasses], pred[kMaxClasses], t[kMaxClasses], d[kMaxClasses];
  for (int64_t i = start; i < stop; i += kLanes) {
    const int nv = static_cast<int>(std::min<int64_t>(kLanes, stop - i));
    load_labels(pb, b, i, nv, blk);
    load_logits(pb, b, i, nv, blk);
    block_softmax(blk, C, p);
    dice_maps(blk, C, mode, p, pred, t);
    for (int64_t c = 0; c < C; ++c)
      d[c] = a[c] * t[c] + (mode.squared ? (2.0f * bb[c]) * pred[c] : splat(bb[c]));
    if (mode.marginal) {  // Φ_g is its own adjoint
      vf set_d = vf{};
      for (int64_t c = 0; c < C; ++c) set_d += d[c] * blk.m[c];
      set_d /= blk.size;
      for (int64_t c = 0; c < C; ++c) d[c] = select(blk.m[c] > 0.0f, set_d, d[c]);
    }
    vf dot = vf{};
    for (int64_t c = 0; c < C; ++c) dot += p[c] * d[c];
    for (int64_t c = 0; c < C; ++c) d[c] = p[c] * (d[c] - dot);
    store_voxel_major(d, C, nv, dz + (b * pb.n + i) * C);
  }
}

ffi::Error DiceSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                        ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                        ffi::Buffer<ffi::F32> size, ffi::ResultBuffer<ffi::F32> sums,
                        int32_t marginal, int32_t leaf, int32_t squared) {
  std::vector<uint32_t> bits;
  auto maybe = make_problem(logits, labels, mem, size, bits);
  if (maybe.has_error()) return maybe.error();
  const Problem pb = maybe.value();
  const DiceMode mode{marginal != 0, leaf != 0, squared != 0};
  const int64_t C = pb.c, per_sample = (pb.n + kChunk - 1) / kChunk;
  std::vector<double> partial(num_chunks(pb) * 3 * C, 0.0);
  for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t j) {
    dice_sums_chunk(pb, mode, b, start, stop, &partial[j * 3 * C]);
  });
  float* out = sums->typed_data();  // [3, B, C]; chunk order: independent of the thread count
  for (int64_t b = 0; b < pb.batch; ++b)
    for (int s = 0; s < 3; ++s)
      for (int64_t c = 0; c < C; ++c) {
        double total = 0.0;
        for (int64_t j = 0; j < per_sample; ++j)
          total += partial[((b * per_sample + j) * 3 + s) * C + c];
        out[(s * pb.batch + b) * C + c] = static_cast<float>(total);
      }
  return ffi::Error::Success();
}

ffi::Error DiceGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                        ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                        ffi::Buffer<ffi::F32> size, ffi::Buffer<ffi::F32> a,
                        ffi::Buffer<ffi::F32> bcoef, ffi::ResultBuffer<ffi::F32> dz,
                        int32_t marginal, int32_t leaf, int32_t squared) {
  std::vector<uint32_t> bits;
  auto maybe = make_problem(logits, labels, mem, size, bits);
  if (maybe.has_error()) return maybe.error();
  const Problem pb = maybe.value();
  if (auto e = check_coefficients(pb, a, pb.c, "a"); e.failure()) return e;
  if (auto e = check_coefficients(pb, bcoef, pb.c, "b"); e.failure()) return e;
  const DiceMode mode{marginal != 0, leaf != 0, squared != 0};
  float* out = dz->typed_data();
  for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t) {
    populate(out + (b * pb.n + start) * pb.c, out + (b * pb.n + stop) * pb.c);
    dice_grad_chunk(pb, mode, a.typed_data() + b * pb.c, bcoef.typed_data() + b * pb.c, b, start,
                    stop, out);
  });
  return ffi::Error::Success();
}

// ------------------------------------------------------------------ marginal cross-entropy
// Per voxel: -log Σ_{c∈g} p_c. When the set's mass underflows in float (its logits far below the
// maximum), the voxel is redone in double with the set's own maximum.
constexpr float kTinyMass = 1e-30f;

void mce_voxel_exact(const float* z, const float* m, int64_t C, double scale, double* loss,
                     float* dz) {
  double mx = -INFINITY, mx_set = -INFINITY;
  for (int64_t c = 0; c < C; ++c) {
    mx = std::max(mx, static_cast<double>(z[c]));
    if (m[c] > 0.0f) mx_set = std::max(mx_set, static_cast<double>(z[c]));
  }
  double s = 0.0, s_set = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    s += std::exp(z[c] - mx);
    if (m[c] > 0.0f) s_set += std::exp(z[c] - mx_set);
  }
  const double lse = mx + std::log(s), lse_set = mx_set + std::log(s_set);
  if (loss) *loss = lse - lse_set;
  if (dz)
    for (int64_t c = 0; c < C; ++c)
      dz[c] = static_cast<float>(scale * (std::exp(z[c] - lse) -
                                          (m[c] > 0.0f ? std::exp(z[c] - lse_set) : 0.0)));
}

// Redoes the lanes flagged in `underflow` exactly (loss added to *loss, gradient written).
void mce_exact_lanes(const Problem& pb, const Block& blk, vi underflow, int64_t b, int64_t i,
                     int nv, double scale, double* loss, float* dz) {
  const int64_t C = pb.c;
  for (int v = 0; v < nv; ++v) {
    if (!underflow[v]) continue;
    float m_row[kMaxClasses];
    for (int64_t c = 0; c < C; ++c) m_row[c] = blk.m[c][v];
    double exact = 0.0;
    mce_voxel_exact(pb.z + (b * pb.n + i + v) * C, m_row, C, scale, loss ? &exact : nullptr,
                    dz ? dz + (b * pb.n + i + v) * C : nullptr);
    if (loss) *loss += exact;
  }
}

LS_INLINE bool any(vi mask) {
  bool found = false;
  for (int v = 0; v < kLanes; ++v) found |= mask[v] != 0;
  return found;
}

LS_CLONES void mce_loss_chunk(const Problem& pb, int64_t b, int64_t start, int64_t stop,
                              double* loss) {
  const int64_t C = pb.c;
  const vf tiny = splat(kTinyMass);
  Block blk;
  vf e[kMaxClasses];
  vf acc = vf{};
  for (int64_t i = start; i < stop; i += kLanes) {
    const int nv = static_cast<int>(std::min<int64_t>(kLanes, stop - i));
    load_labels(pb, b, i, nv, blk);
    load_logits(pb, b, i, nv, blk);
    vf sum;
    block_exp(blk, C, e, sum);
    vf set_sum = vf{};
    for (int64_t c = 0; c < C; ++c) set_sum += blk.m[c] * e[c];
    const vi underflow = (blk.w > 0.0f) & (set_sum < tiny);
    acc += select(underflow, vf{}, blk.w * (log_v(sum) - log_v(vmax(set_sum, tiny))));
    if (any(underflow)) mce_exact_lanes(pb, blk, underflow, b, i, nv, 0.0, loss, nullptr);
  }
  double total = 0.0;
  for (int v = 0; v < kLanes; ++v) total += acc[v];
  *loss += total;
}

LS_CLONES void mce_grad_chunk(const Problem& pb, int64_t b, int64_t start, int64_t stop,
                              float scale, float* dz) {
  const int64_t C = pb.c;
  const vf tiny = splat(kTinyMass);
  Block blk;
  vf p[kMaxClasses];
  for (int64_t i = start; i < stop; i += kLanes) {
    const int nv = static_cast<int>(std::min<int64_t>(kLanes, stop - i));
    load_labels(pb, b, i, nv, blk);
    load_logits(pb, b, i, nv, blk);
    block_softmax(blk, C, p);
    // In the set: -p_c (1 - P_set) / P_set, with 1 - P_set summed over the leaves outside the set
    // (no cancellation; exactly 0 for the ignore label). Outside: p_c.
    vf set_mass = vf{}, out_mass = vf{};
    for (int64_t c = 0; c < C; ++c) {
      set_mass += blk.m[c] * p[c];
      out_mass += (1.0f - blk.m[c]) * p[c];
    }
    const vi underflow = (blk.w > 0.0f) & (set_mass < tiny);
    const vf in_set = -scale * out_mass / vmax(set_mass, tiny);
    for (int64_t c = 0; c < C; ++c) p[c] = p[c] * select(blk.m[c] > 0.0f, in_set, splat(scale));
    store_voxel_major(p, C, nv, dz + (b * pb.n + i) * C);
    if (any(underflow)) mce_exact_lanes(pb, blk, underflow, b, i, nv, scale, nullptr, dz);
  }
}

ffi::Error MceLossImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                       ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                       ffi::Buffer<ffi::F32> size, ffi::ResultBuffer<ffi::F32> loss) {
  std::vector<uint32_t> bits;
  auto maybe = make_problem(logits, labels, mem, size, bits);
  if (maybe.has_error()) return maybe.error();
  const Problem pb = maybe.value();
  const int64_t per_sample = (pb.n + kChunk - 1) / kChunk;
  std::vector<double> partial(num_chunks(pb), 0.0);
  for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t j) {
    mce_loss_chunk(pb, b, start, stop, &partial[j]);
  });
  for (int64_t b = 0; b < pb.batch; ++b) {
    double total = 0.0;
    for (int64_t j = 0; j < per_sample; ++j) total += partial[b * per_sample + j];
    loss->typed_data()[b] = static_cast<float>(total);
  }
  return ffi::Error::Success();
}

ffi::Error MceGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                       ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                       ffi::Buffer<ffi::F32> size, ffi::Buffer<ffi::F32> scale,
                       ffi::ResultBuffer<ffi::F32> dz) {
  std::vector<uint32_t> bits;
  auto maybe = make_problem(logits, labels, mem, size, bits);
  if (maybe.has_error()) return maybe.error();
  const Problem pb = maybe.value();
  if (auto e = check_coefficients(pb, scale, 1, "scale"); e.failure()) return e;
  float* out = dz->typed_data();
  for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t) {
    populate(out + (b * pb.n + start) * pb.c, out + (b * pb.n + stop) * pb.c);
    mce_grad_chunk(pb, b, start, stop, scale.typed_data()[b], out);
  });
  return ffi::Error::Success();
}

}  // namespace

#define LS_ARGS                        \
  .Ctx<ffi::ThreadPool>()              \
      .Arg<ffi::Buffer<ffi::F32>>()    \
      .Arg<ffi::Buffer<ffi::S32>>()    \
      .Arg<ffi::Buffer<ffi::F32>>()    \
      .Arg<ffi::Buffer<ffi::F32>>()
#define LS_DICE_ATTRS \
  .Attr<int32_t>("marginal").Attr<int32_t>("leaf").Attr<int32_t>("squared")

XLA_FFI_DEFINE_HANDLER_SYMBOL(LsDiceSums, DiceSumsImpl,
                              ffi::Ffi::Bind() LS_ARGS.Ret<ffi::Buffer<ffi::F32>>() LS_DICE_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LsDiceGrad, DiceGradImpl,
                              ffi::Ffi::Bind() LS_ARGS.Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() LS_DICE_ATTRS);

XLA_FFI_DEFINE_HANDLER_SYMBOL(LsMceLoss, MceLossImpl,
                              ffi::Ffi::Bind() LS_ARGS.Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LsMceGrad, MceGradImpl,
                              ffi::Ffi::Bind() LS_ARGS.Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
