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
// benchmarks/RESULTS.md) and write the gradient. Voxels are processed in blocks of one vector
// register's width, channel-major (GCC/Clang vector extensions), so arithmetic is vectorised
// across voxels; exp and log are polynomial (Cephes, ~1 ulp) so they vectorise too. The block code
// (_cpu_kernels_isa.inc) is compiled once per x86-64 level (AVX-512, AVX2: hardware gathers for
// the layout transposes) and once portably, and the best variant for the CPU is chosen at run
// time. Work is split in fixed chunks over XLA's intra-op thread pool; partial sums are kept per
// chunk and added in chunk order, so results do not depend on the number of threads.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LS_X86_TARGETS 1  // x86-64-v3 and -v4 variants, chosen at run time
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxClasses = 32;   // larger C falls back to the pure-JAX path (checked in Python)
constexpr int64_t kChunk = 4096;  // voxels per work item and per float32 partial sum
constexpr float kTinyMass = 1e-30f;  // below: a set's probability is redone exactly in double

#define LS_INLINE inline __attribute__((always_inline))

struct Problem {
  const float* z;         // [B, N, C] logits
  const int32_t* g;       // [B, N]
  const uint32_t* bits;   // [K]: bit c set when leaf c is in set k (the membership matrix, packed)
  const float* size;      // [K]
  int64_t batch, n, c, k;
};

struct DiceMode {
  bool marginal, leaf, squared;
};

// -log Σ_{c∈g} p_c of one voxel, and its gradient, in double with the set's own maximum: used
// when the set's probability underflows float (its logits far below the maximum).
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

}  // namespace

// ------------------------------------------------------------------ per-target code
#define LS_ISA portable
#define LS_LEVEL 0
#define LS_WIDTH 4
#include "_cpu_kernels_isa.inc"
#undef LS_ISA
#undef LS_LEVEL
#undef LS_WIDTH

#if LS_X86_TARGETS
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt")
#define LS_ISA x86_64_v3
#define LS_LEVEL 3
#define LS_WIDTH 8
#include "_cpu_kernels_isa.inc"
#undef LS_ISA
#undef LS_LEVEL
#undef LS_WIDTH
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512cd,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c,lzcnt,movbe,popcnt")
#define LS_ISA x86_64_v4
#define LS_LEVEL 4
#define LS_WIDTH 16
#include "_cpu_kernels_isa.inc"
#undef LS_ISA
#undef LS_LEVEL
#undef LS_WIDTH
#pragma GCC pop_options
#endif

namespace {

// The work-item functions of one target.
struct Isa {
  const char* name;
  void (*dice_sums)(const Problem&, DiceMode, int64_t, int64_t, int64_t, double*);
  void (*dice_grad)(const Problem&, DiceMode, const float*, const float*, int64_t, int64_t, int64_t,
                    float*);
  void (*mce_loss)(const Problem&, int64_t, int64_t, int64_t, double*);
  void (*mce_grad)(const Problem&, int64_t, int64_t, int64_t, float, float*);
};

#define LS_ISA_TABLE(ns) \
  Isa { #ns, ns::dice_sums_chunk, ns::dice_grad_chunk, ns::mce_loss_chunk, ns::mce_grad_chunk }

// The best target this CPU supports; LABELSET_JAX_KERNEL_ISA=portable|x86_64_v3|x86_64_v4 picks
// one (tests run every variant this way).
const Isa& isa() {
  static const Isa chosen = [] {
    const char* want = std::getenv("LABELSET_JAX_KERNEL_ISA");
    const std::string w = want ? want : "";
#if LS_X86_TARGETS
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi2");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    if (w == "portable") return LS_ISA_TABLE(portable);
    if (v4 && (w.empty() || w == "x86_64_v4")) return LS_ISA_TABLE(x86_64_v4);
    if (v3 && (w.empty() || w == "x86_64_v4" || w == "x86_64_v3")) return LS_ISA_TABLE(x86_64_v3);
#endif
    return LS_ISA_TABLE(portable);
  }();
  return chosen;
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

// Runs body(problem) once the shared operands are validated.
template <typename F>
ffi::Error with_problem(ffi::Buffer<ffi::F32>& logits, ffi::Buffer<ffi::S32>& labels,
                        ffi::Buffer<ffi::F32>& mem, ffi::Buffer<ffi::F32>& size, F body) {
  std::vector<uint32_t> bits;
  auto problem = make_problem(logits, labels, mem, size, bits);
  if (problem.has_error()) return problem.error();
  return body(problem.value());
}

// ------------------------------------------------------------------ FFI handlers
ffi::Error DiceSumsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                        ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                        ffi::Buffer<ffi::F32> size, ffi::ResultBuffer<ffi::F32> sums,
                        int32_t marginal, int32_t leaf, int32_t squared) {
  return with_problem(logits, labels, mem, size, [&](const Problem& pb) -> ffi::Error {
    const DiceMode mode{marginal != 0, leaf != 0, squared != 0};
    const int64_t C = pb.c, per_sample = (pb.n + kChunk - 1) / kChunk;
    std::vector<double> partial(num_chunks(pb) * 3 * C, 0.0);
    for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t j) {
      isa().dice_sums(pb, mode, b, start, stop, &partial[j * 3 * C]);
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
  });
}

ffi::Error DiceGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                        ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                        ffi::Buffer<ffi::F32> size, ffi::Buffer<ffi::F32> a,
                        ffi::Buffer<ffi::F32> bcoef, ffi::ResultBuffer<ffi::F32> dz,
                        int32_t marginal, int32_t leaf, int32_t squared) {
  return with_problem(logits, labels, mem, size, [&](const Problem& pb) -> ffi::Error {
    if (auto e = check_coefficients(pb, a, pb.c, "a"); e.failure()) return e;
    if (auto e = check_coefficients(pb, bcoef, pb.c, "b"); e.failure()) return e;
    const DiceMode mode{marginal != 0, leaf != 0, squared != 0};
    float* out = dz->typed_data();
    for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t) {
      populate(out + (b * pb.n + start) * pb.c, out + (b * pb.n + stop) * pb.c);
      isa().dice_grad(pb, mode, a.typed_data() + b * pb.c, bcoef.typed_data() + b * pb.c, b, start,
                      stop, out);
    });
    return ffi::Error::Success();
  });
}

ffi::Error MceLossImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                       ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                       ffi::Buffer<ffi::F32> size, ffi::ResultBuffer<ffi::F32> loss) {
  return with_problem(logits, labels, mem, size, [&](const Problem& pb) -> ffi::Error {
    const int64_t per_sample = (pb.n + kChunk - 1) / kChunk;
    std::vector<double> partial(num_chunks(pb), 0.0);
    for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t j) {
      isa().mce_loss(pb, b, start, stop, &partial[j]);
    });
    for (int64_t b = 0; b < pb.batch; ++b) {
      double total = 0.0;
      for (int64_t j = 0; j < per_sample; ++j) total += partial[b * per_sample + j];
      loss->typed_data()[b] = static_cast<float>(total);
    }
    return ffi::Error::Success();
  });
}

ffi::Error MceGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                       ffi::Buffer<ffi::S32> labels, ffi::Buffer<ffi::F32> mem,
                       ffi::Buffer<ffi::F32> size, ffi::Buffer<ffi::F32> scale,
                       ffi::ResultBuffer<ffi::F32> dz) {
  return with_problem(logits, labels, mem, size, [&](const Problem& pb) -> ffi::Error {
    if (auto e = check_coefficients(pb, scale, 1, "scale"); e.failure()) return e;
    float* out = dz->typed_data();
    for_chunks(pool, pb, [&](int64_t b, int64_t start, int64_t stop, int64_t) {
      populate(out + (b * pb.n + start) * pb.c, out + (b * pb.n + stop) * pb.c);
      isa().mce_grad(pb, b, start, stop, scale.typed_data()[b], out);
    });
    return ffi::Error::Success();
  });
}

}  // namespace

// The target the kernels run on (for benchmarks and tests).
extern "C" __attribute__((visibility("default"))) const char* LsKernelIsa() { return isa().name; }

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
