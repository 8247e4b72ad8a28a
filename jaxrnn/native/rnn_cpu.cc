// jaxrnn's LSTM, GRU and vanilla RNN for CPUs with vector units: the whole unroll in one XLA FFI call.
//
// Why a kernel: on XLA's CPU backend every step of a lax.scan is a handful of
// separate thunks (a small matmul through Eigen, a fusion for the gates, the
// copies of the carry), and the bare matmuls of an LSTM already cost more as an
// XLA loop than torch's oneDNN LSTM does in total (README, Performance). Here a
// step is one pass over the packed weights per core, with the gates computed on
// the accumulators while they are still in registers.
//
// Layout. Inside the kernel everything is "feature-major": a state is stored as
// (features, Bp) with the batch, padded to a multiple of 16, along the fast
// axis, so one logical vector `V` (16 floats: one 512-bit register with
// AVX-512, two 256-bit ones with AVX2, see Vectors) holds 16 batch rows of one
// feature. A step is
//
//     G^T (GH, Bp) = W^T (GH, I+H) . [x_t^T ; h_{t-1}^T] (I+H, Bp)    (G gates: 4, 3 or 1)
//
// computed in tiles of (S slots x U units) x (16 or 32 batch rows): each
// weight is broadcast once per tile and multiplies the one or two batch
// vectors, and the tile's accumulators hold all S gate slots of its U
// units (the LSTM's 4 gates take 4 slots, the GRU's 3 too: h W_hn apart from
// x W_in; the vanilla cell's one gate 1, so its tiles hold 4 times the units),
// so c_t and h_t are finished right there. The weights are packed once per
// call so that a tile reads its (I+H) x G U block contiguously. The tile sizes
// follow the register file (kForwardUnits, kForwardBatch, kRows, kBackwardBatch).
//
// That layout is "wide". Batches of a few rows, where most of its 16 lanes
// would be padding, run in a second one, "small" (ForwardSmall,
// BackwardSmall): lanes along hidden units, states row-major (B, H); so do
// weights too large for the caches (kLargeWeightBytes). Both give the same
// bits (see "small batches"); Python picks one by the batch and the weights
// (layout_for in __init__.py) and the backward call takes the forward's.
//
// Threads. A step is split into one share of contiguous hidden units per
// thread (c and h of a unit are only ever written by its share), and the only
// exchange is h_t, which every share of the next step reads: the shares of
// step t+1 start when all of step t's are done (Phases, below), with h and the
// transposed x_t double-buffered so that step t+1's are written while step
// t's are still read. Helper threads are XLA's intra-op pool's (the default,
// `pooled`) or the call's own (JAXRNN_NATIVE_HELPERS=threads): run_phases.
//
// The backward pass mirrors it: per step, each share turns d h_t (and the
// LSTM's d c_t) and the kept gate activations of its units into the gate pre-activation
// gradients dG_t (into a ring of two chunks of steps, from which each share
// adds a whole chunk's weight gradients at once: WeightGradient), then, once
// every share's dG_t is there,
// computes its units' part of d h_{t-1} = dG_t W_h^T and its share of
// d x_t = dG_t W_i^T, and goes straight on to its units' dG_{t-1}: one
// exchange per step, as forward.
//
// One source for every vector width: the kernel is written on the 16-lane
// logical vector of Vectors (GCC/Clang vector extensions), which the compiler
// maps onto the registers of the CPU it is built for. Built on first use by
// jaxrnn/native/__init__.py with the machine's C++ compiler (-march=native);
// it runs (jaxrnn_native_available) where built for AVX-512 or AVX2 with FMA,
// and jaxrnn_native_isa() names which. Shared by every cell: the loop, the
// tiles, the threads; each cell adds its slots, what it keeps and its
// elementwise step (Lstm, Gru, Vanilla below).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
#define JAXRNN_ISA "avx512"
#define JAXRNN_SUPPORTED 1
#elif defined(__AVX2__) && defined(__FMA__)
#define JAXRNN_ISA "avx2"
#define JAXRNN_SUPPORTED 1
#elif defined(__AVX__)
#define JAXRNN_ISA "avx"
#elif defined(__SSE2__)
#define JAXRNN_ISA "sse2"
#elif defined(__ARM_NEON)
#define JAXRNN_ISA "neon"
#else
#define JAXRNN_ISA "generic"
#endif
#ifndef JAXRNN_SUPPORTED
#define JAXRNN_SUPPORTED 0
#endif

#include <sys/mman.h>

namespace {

// Always inlined: GCC weighs a primitive before vectorising its lanes, and left fma and exp16 out of line.
#define JAXRNN_INLINE inline __attribute__((always_inline))

// -------------------------------------------------------------- vectors ----
//
// The kernel's vector is V: 16 floats, 16 batch rows of one feature (the batch
// is padded to 16, masks are 16 bits, transposes 16 x 16). It is kParts
// machine vectors of kWidth floats (GCC/Clang vector extensions), so that each
// operation on it is one instruction per machine register: one zmm with
// AVX-512, two ymm with AVX (a 64-byte extension vector where the target has
// no such registers compiles into stack traffic with GCC, hence the parts).
// Everything below this section is written on V and its primitives.

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;  // SSE, NEON, or whatever the compiler makes of 16-byte vectors
#endif
constexpr int kLanes = 16;
constexpr int kParts = kLanes / kWidth;
static_assert(kWidth == 4 || kWidth == 8 || kWidth == 16, "machine vectors of 4, 8 or 16 floats");

typedef float Native __attribute__((vector_size(4 * kWidth)));
typedef int32_t NativeInt __attribute__((vector_size(4 * kWidth)));
typedef float Unaligned __attribute__((vector_size(4 * kWidth), aligned(4), may_alias));

struct V {
  Native p[kParts];
};
struct Mask {  // per lane: all ones (true) or zero
  NativeInt p[kParts];
};

// Each part of a V, i in [0, kParts): r.p[i] = expression.
#define JAXRNN_PARTS(expression)                        \
  V r;                                                  \
  for (int i = 0; i < kParts; ++i) r.p[i] = expression; \
  return r

JAXRNN_INLINE V zero() { JAXRNN_PARTS(Native{}); }
// A vector of kWidth lanes x.
template <class T, class E, size_t... J>
JAXRNN_INLINE T all_lanes(E x, std::index_sequence<J...>) {
  return T{((void)J, x)...};
}
JAXRNN_INLINE V splat(float x) {
  const Native n = all_lanes<Native>(x, std::make_index_sequence<kWidth>{});
  JAXRNN_PARTS(n);
}
JAXRNN_INLINE V load(const float* p) { JAXRNN_PARTS(Native(*reinterpret_cast<const Unaligned*>(p + i * kWidth))); }
JAXRNN_INLINE void store(float* p, V v) {
  for (int i = 0; i < kParts; ++i) *reinterpret_cast<Unaligned*>(p + i * kWidth) = v.p[i];
}

JAXRNN_INLINE V operator+(V a, V b) { JAXRNN_PARTS(a.p[i] + b.p[i]); }
JAXRNN_INLINE V operator-(V a, V b) { JAXRNN_PARTS(a.p[i] - b.p[i]); }
JAXRNN_INLINE V operator*(V a, V b) { JAXRNN_PARTS(a.p[i] * b.p[i]); }
JAXRNN_INLINE V operator/(V a, V b) { JAXRNN_PARTS(a.p[i] / b.p[i]); }

// a b + c with one rounding: an FMA instruction where the target has one (the
// compiler makes the lanes' fmaf one vector operation), C's fmaf where it has
// not. The lanes are written out, not looped over (as in all_lanes), so that
// the compiler sees one vector expression, not a loop to vectorise.
template <size_t... J>
JAXRNN_INLINE Native fma_lanes(Native a, Native b, Native c, std::index_sequence<J...>) {
  return Native{__builtin_fmaf(a[J], b[J], c[J])...};
}
JAXRNN_INLINE V fma(V a, V b, V c) { JAXRNN_PARTS(fma_lanes(a.p[i], b.p[i], c.p[i], std::make_index_sequence<kWidth>{})); }
// c - a b with one rounding.
JAXRNN_INLINE V fnma(V a, V b, V c) { JAXRNN_PARTS(fma_lanes(-a.p[i], b.p[i], c.p[i], std::make_index_sequence<kWidth>{})); }

JAXRNN_INLINE Mask operator<(V a, V b) {
  Mask m;
  for (int i = 0; i < kParts; ++i) m.p[i] = a.p[i] < b.p[i];
  return m;
}
JAXRNN_INLINE Mask operator>(V a, V b) { return b < a; }
JAXRNN_INLINE Mask operator<=(V a, V b) {
  Mask m;
  for (int i = 0; i < kParts; ++i) m.p[i] = a.p[i] <= b.p[i];
  return m;
}

// Lane l is set where bit l of `bits` is (bit l of a 16-row mask word: row b0 + l).
template <size_t... J>
JAXRNN_INLINE NativeInt lane_bits(std::index_sequence<J...>) {
  return NativeInt{(1 << J)...};
}
JAXRNN_INLINE Mask lanes(uint16_t bits) {
  const NativeInt bit = lane_bits(std::make_index_sequence<kWidth>{});
  Mask m;
  for (int i = 0; i < kParts; ++i)
    m.p[i] = (all_lanes<NativeInt>(int32_t{bits} >> (i * kWidth), std::make_index_sequence<kWidth>{}) & bit) != 0;
  return m;
}
JAXRNN_INLINE uint16_t first(int n) { return static_cast<uint16_t>((1u << n) - 1); }  // lanes [0, n)

// a where m is set, else b.
JAXRNN_INLINE V select(Mask m, V a, V b) { JAXRNN_PARTS(m.p[i] ? a.p[i] : b.p[i]); }
JAXRNN_INLINE V select(uint16_t bits, V a, V b) { return select(lanes(bits), a, b); }
// v where bits are set, else 0.
JAXRNN_INLINE V keep(uint16_t bits, V v) { return select(bits, v, zero()); }

// Lanes [0, n) of p, zeros past them; nothing past them is read.
JAXRNN_INLINE V load_first(const float* p, int n) {
  if (n == kLanes) return load(p);
  float lanes[kLanes] = {};
  std::memcpy(lanes, p, sizeof(float) * n);
  return load(lanes);
}
// v's lanes [0, n) into p; nothing past them is written.
JAXRNN_INLINE void store_first(float* p, int n, V v) {
  if (n == kLanes) return store(p, v);
  float lanes[kLanes];
  store(lanes, v);
  std::memcpy(p, lanes, sizeof(float) * n);
}
// The same for n known when compiling: whole machine vectors and one narrower store, not a copy of
// n floats (a rep movs, in the backward's packing of the weights: 2.5% of its time).
template <int N>
JAXRNN_INLINE void store_first(float* p, V v) {
  for (int i = 0; i < kParts; ++i) {
    if ((i + 1) * kWidth <= N) *reinterpret_cast<Unaligned*>(p + i * kWidth) = v.p[i];
    else if (i * kWidth < N) std::memcpy(p + i * kWidth, &v.p[i], sizeof(float) * (N - i * kWidth));
  }
}

// v from here on in registers: GCC would rather fold its loads into each FMA
// that reads it (AVX2's forward tile: 12 loads for 8 FMAs, bound by the loads).
JAXRNN_INLINE void in_registers(V& v) {
#if defined(__AVX__)
  for (int i = 0; i < kParts; ++i) __asm__("" : "+v"(v.p[i]));
#else
  (void)v;
#endif
}

// The cache line at p into L2.
JAXRNN_INLINE void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

// Waiting a moment on another core.
JAXRNN_INLINE void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// The calling thread's floating-point mode (x86: MXCSR, with its flush-to-zero
// and denormals-are-zero bits; AArch64: FPCR), to run helpers under (Phases).
JAXRNN_INLINE uint64_t float_mode() {
#if defined(__x86_64__) || defined(__i386__)
  return _mm_getcsr();
#elif defined(__aarch64__)
  uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  return fpcr;
#else
  return 0;
#endif
}
JAXRNN_INLINE void set_float_mode(uint64_t mode) {
#if defined(__x86_64__) || defined(__i386__)
  _mm_setcsr(static_cast<unsigned>(mode));
#elif defined(__aarch64__)
  __asm__ __volatile__("msr fpcr, %0" : : "r"(mode));
#else
  (void)mode;
#endif
}

// 16 x 16 transposes: r[i] <- column i of the matrix whose row j is r[j].
// In machine vectors: a kWidth x kWidth transpose of each of the kParts^2
// blocks, by shuffles of two vectors (each one instruction on x86: unpacks
// within 128-bit lanes, then moves of 128-bit lanes).
template <class P, size_t... I>
JAXRNN_INLINE Native shuffle(Native a, Native b, std::index_sequence<I...>) {
#if defined(__clang__) || __GNUC__ >= 12
  return __builtin_shufflevector(a, b, P::at(I)...);
#else  // GCC before 12
  return __builtin_shuffle(a, b, NativeInt{P::at(I)...});
#endif
}
template <class P>
JAXRNN_INLINE Native shuffle(Native a, Native b) {
  return shuffle<P>(a, b, std::make_index_sequence<kWidth>{});
}
// Within each 4 lanes k: (a[k0], b[k0], a[k1], b[k1]), k0, k1 its first two lanes (or last two: hi).
template <int hi>
struct Unpack32 {
  static constexpr int at(int i) { return (i % 2 ? kWidth : 0) + i / 4 * 4 + i % 4 / 2 + 2 * hi; }
};
// Within each 4 lanes k: (a[k0], a[k1], b[k0], b[k1]) (or the last two of each: hi).
template <int hi>
struct Unpack64 {
  static constexpr int at(int i) { return (i % 4 / 2 ? kWidth : 0) + i / 4 * 4 + i % 2 + 2 * hi; }
};
// 16 lanes, 128-bit blocks q: (a.q0, a.q2, b.q0, b.q2) (odd: a.q1, a.q3, b.q1, b.q3).
template <int odd>
struct EvenBlocks {
  static constexpr int at(int i) { return (i / 8 ? kWidth : 0) + 4 * (i / 4 % 2 * 2 + odd) + i % 4; }
};
// 8 lanes: (a's half, b's half), the low halves or the high ones.
template <int hi>
struct Halves {
  static constexpr int at(int i) { return (i / 4 ? kWidth : 0) + 4 * hi + i % 4; }
};

JAXRNN_INLINE void transpose_native(Native (&r)[kWidth]) {
  Native t[kWidth];
  for (int i = 0; i < kWidth / 2; ++i) {  // 2 x 2 blocks of floats
    t[2 * i] = shuffle<Unpack32<0>>(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = shuffle<Unpack32<1>>(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < kWidth / 4; ++i) {  // 4 x 4: within each 128 bits, the transpose is done
    r[4 * i] = shuffle<Unpack64<0>>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = shuffle<Unpack64<1>>(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = shuffle<Unpack64<0>>(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = shuffle<Unpack64<1>>(t[4 * i + 1], t[4 * i + 3]);
  }
  if constexpr (kWidth == 8) {  // 8 x 8, moving 128-bit halves
    for (int j = 0; j < 4; ++j) {
      t[j] = shuffle<Halves<0>>(r[j], r[4 + j]);
      t[4 + j] = shuffle<Halves<1>>(r[j], r[4 + j]);
    }
    for (int j = 0; j < 8; ++j) r[j] = t[j];
  } else if constexpr (kWidth == 16) {  // 8 x 8, then 16 x 16, moving 128-bit blocks
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 4; ++j) {
        t[8 * i + j] = shuffle<EvenBlocks<0>>(r[8 * i + j], r[8 * i + 4 + j]);
        t[8 * i + 4 + j] = shuffle<EvenBlocks<1>>(r[8 * i + j], r[8 * i + 4 + j]);
      }
    for (int j = 0; j < 8; ++j) {
      r[j] = shuffle<EvenBlocks<0>>(t[j], t[8 + j]);
      r[8 + j] = shuffle<EvenBlocks<1>>(t[j], t[8 + j]);
    }
  }
}

JAXRNN_INLINE void transpose16(V (&r)[kLanes]) {
  if constexpr (kParts == 1) {
    Native n[kWidth];
    for (int j = 0; j < kLanes; ++j) n[j] = r[j].p[0];
    transpose_native(n);
    for (int j = 0; j < kLanes; ++j) r[j].p[0] = n[j];
  } else {
    V out[kLanes];
    for (int a = 0; a < kParts; ++a)  // rows [a kWidth, (a + 1) kWidth) of column block b
      for (int b = 0; b < kParts; ++b) {
        Native n[kWidth];
        for (int j = 0; j < kWidth; ++j) n[j] = r[a * kWidth + j].p[b];
        transpose_native(n);
        for (int j = 0; j < kWidth; ++j) out[b * kWidth + j].p[a] = n[j];
      }
    for (int j = 0; j < kLanes; ++j) r[j] = out[j];
  }
}

// ---------------------------------------------------------------- math ----

// exp(x): 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and a degree-6
// polynomial for 2^f (relative error about 2e-7). x is first clamped to
// [-88, 89], which keeps n finite (at x = +-inf, t - n would be inf - inf):
// below -88 exp is 0 or a denormal, which XLA's CPU code (and this kernel,
// run under the caller's floating-point mode, see Phases) flushes to 0 anyway;
// from 88.73 on the result overflows to +inf, as exp does, so that
// sigmoid(-inf) is exactly 0, as in XLA, and its derivative s (1 - s) too. The
// clamp keeps NaN (comparisons with NaN are false), and NaN gives NaN.
//
// n is rounded to nearest (even) by adding 1.5 * 2^23 + 254, which leaves
// n + 254 in the sum's low mantissa bits (`rounded`, an even offset keeps ties
// to even), and 2^n is made from exponent bits in two factors, 2^(n >> 1)
// 2^(n - (n >> 1)): with n in [-127, 128] each is a normal float, and p 2^n is
// rounded once, by the second product. Their exponent fields are the low 9
// bits of rounded >> 1 (n >> 1, plus 127) and of rounded - (rounded >> 1) (the
// rest, plus 127): 1.5 * 2^23 and half of it have none.
// Built with -ffp-contract=off (FLAGS in __init__.py), as everywhere here: so
// these are, bit for bit, the values of the AVX-512 roundscale/scalef version
// this replaced (fused, x log2 e would not be rounded before + magic and - n).
JAXRNN_INLINE V exp16(V x) {
  const V lo = splat(-88.f), hi = splat(89.f);
  x = select(x < lo, lo, x);
  x = select(x > hi, hi, x);
  const V t = x * splat(1.4426950408889634f);
  const V magic = splat(12583166.f);  // 1.5 * 2^23 + 254
  const V rounded = t + magic;
  const V n = rounded - magic;
  const V f = t - n;
  V p = splat(1.535336188319500e-4f);
  p = fma(p, f, splat(1.339887440266574e-3f));
  p = fma(p, f, splat(9.618437357674640e-3f));
  p = fma(p, f, splat(5.550332471162809e-2f));
  p = fma(p, f, splat(2.402264791363012e-1f));
  p = fma(p, f, splat(6.931472028550421e-1f));
  p = fma(p, f, splat(1.f));
  V half, rest;
  for (int i = 0; i < kParts; ++i) {
    const NativeInt bits = reinterpret_cast<NativeInt>(rounded.p[i]), halved = bits >> 1;
    half.p[i] = reinterpret_cast<Native>(halved << 23);
    rest.p[i] = reinterpret_cast<Native>((bits - halved) << 23);
  }
  return p * half * rest;
}

JAXRNN_INLINE V sigmoid16(V x) {
  const V one = splat(1.f);
  return one / (one + exp16(zero() - x));
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at both ends (+-1 at +-inf,
// as XLA's), NaN at NaN, no cancellation trouble at float32 tolerance.
JAXRNN_INLINE V tanh16(V x) {
  const V one = splat(1.f);
  const V e = exp16(x + x);
  return one - splat(2.f) / (e + one);
}
// ------------------------------------------------------------- threads ----

// The work of one call as a sequence of phases (a step, say), each split into
// `shares` tasks that may run in parallel; a phase's tasks start only when all
// of the previous phase's are done. Any thread may run any task: threads claim
// them in order from one counter, so a helper that starts late, or not at all
// (XLA's thread pool busy with other work), costs parallelism, never a stall,
// and the calling thread alone finishes the call if need be.
//
// Every task runs under the calling thread's floating-point mode (`mode`, x86's
// MXCSR): XLA runs its CPU code with denormals flushed (FTZ and DAZ), and a
// helper from elsewhere that did not would make, say, a denormal x_t times an
// infinite weight inf where XLA's loop gives NaN (0 * inf), and results depend
// on which thread ran a task.
struct Phases {
  int64_t phases;
  int shares;
  uint64_t mode;
  std::function<void(int64_t, int)> task;  // task(phase, share)
  std::atomic<int64_t> next{0}, done{0};

  // Spin while another thread finishes its task (tens of microseconds), then
  // yield the core, so that more threads than free cores slow down, not stall.
  void wait_for(int64_t count) {
    for (int spins = 0; done.load(std::memory_order_acquire) < count; ++spins) {
      if (spins < 4096) cpu_relax();
      else std::this_thread::yield();
    }
  }

  // For JAXRNN_NATIVE_TRACE: when the first helper began (ns after the call did, -1 before), and how many
  // tasks the helpers ran.
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::thread::id caller = std::this_thread::get_id();
  std::atomic<int64_t> helper_start_ns{-1}, helper_tasks{0};

  void work(bool helper = false) {
    helper = helper && std::this_thread::get_id() != caller;  // a pool may run a scheduled task inline
    if (helper) {
      int64_t none = -1;
      helper_start_ns.compare_exchange_strong(none, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                        std::chrono::steady_clock::now() - start).count());
    }
    const uint64_t own = float_mode();
    set_float_mode(mode);
    const int64_t total = phases * shares;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      wait_for(k / shares * shares);  // all of the previous phase
      task(k / shares, static_cast<int>(k % shares));
      if (helper) helper_tasks.fetch_add(1, std::memory_order_relaxed);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
    set_float_mode(own);  // a pool thread goes back to its own mode
  }

  // With JAXRNN_NATIVE_TRACE set (read at every call), one line on stderr for the call: its time, and
  // when its helpers began and how much of its work they did. A helper that starts late leaves the
  // caller to run the shares alone meanwhile (docs/performance.md, the batch of 8).
  void trace() const {
    if (!std::getenv("JAXRNN_NATIVE_TRACE")) return;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const int64_t began = helper_start_ns.load();
    char helpers[64] = "no helper began";
    if (began >= 0) std::snprintf(helpers, sizeof helpers, "the first helper began %.3f ms in", began * 1e-6);
    std::fprintf(stderr, "jaxrnn native: %lld phases x %d shares in %.3f ms, %lld tasks on helpers; %s\n",
                 static_cast<long long>(phases), shares, ms, static_cast<long long>(helper_tasks.load()), helpers);
  }
};

// Run `task(phase, share)` for every phase in order on the calling thread and
// `shares` - 1 helpers: threads of XLA's intra-op pool (`pooled`) or threads
// of our own. A pool helper that runs after the call has returned finds no
// task left: it only touches the shared counters, never the call's buffers.
void run_phases(ffi::ThreadPool& pool, bool pooled, int64_t phases, int shares,
                std::function<void(int64_t, int)> task) {
  auto state = std::make_shared<Phases>();
  state->phases = phases;
  state->shares = shares;
  state->mode = float_mode();
  state->task = std::move(task);
  std::vector<std::thread> own;
  for (int i = 1; i < shares; ++i) {
    if (pooled) pool.Schedule([state] { state->work(true); });
    else own.emplace_back([state] { state->work(true); });
  }
  state->work();
  state->wait_for(phases * shares);  // a helper may still be in its last task
  state->trace();
  for (auto& t : own) t.join();
}

// Share `tid` of `n`, [lo, hi), of `groups` groups of units.
struct Range {
  int lo, hi;
};
inline Range share(int groups, int tid, int n) {
  return {static_cast<int>(int64_t{groups} * tid / n), static_cast<int>(int64_t{groups} * (tid + 1) / n)};
}

// Register tiles, from the register file. A forward tile keeps S slots x U
// units x NB batch vectors of accumulators (S: the cell's kSlots), of which
// each pass over the weights (x_t's, then h_{t-1}'s) updates the G slots its
// gate blocks add into; a backward tile R rows x NB. With AVX-512, 32
// registers, a vector each: NB = 2 and as many units as make 16 registers of
// accumulators forward (the LSTM and the GRU 2, the vanilla cell 8), R = 8,
// NB = 2 backward, 16 registers of accumulators too. With AVX2, 16 registers,
// two a vector: NB = 1, and forward as many units as keep a pass's
// accumulators in 12 registers (the LSTM 1, the GRU 2, the vanilla cell 6),
// backward R = 4 (5 and 6 measured the same); larger tiles spill
// accumulators, which measured up to 1.5 times slower.
constexpr bool kWideRegisters = kWidth == 16;
constexpr int kForwardBatch = kWideRegisters ? 2 : 1;  // batch vectors per forward tile: 32 rows, or 16
// Machine registers a forward tile's accumulators may take: AVX-512's 16 of 32, AVX2's 12 of 16.
constexpr int kForwardAccumulators = kWideRegisters ? 16 : 12;
template <class Cell>
constexpr int kForwardUnits = kWideRegisters ? kForwardAccumulators / (Cell::kSlots * kForwardBatch)
                                             : std::max(1, kForwardAccumulators / (Cell::kGates * kParts * kForwardBatch));
constexpr int kRows = kWideRegisters ? 8 : 4;           // rows per backward tile
constexpr int kBackwardBatch = kWideRegisters ? 2 : 1;  // batch vectors per backward tile

// Batch tiles: 16 NB rows while they last, then 16.
template <int NB, typename F>
void for_batch_tiles(int Bp, F&& f) {
  static_assert(NB == 1 || NB == 2);
  int b = 0;
  if constexpr (NB == 2)
    for (; b + 32 <= Bp; b += 32) f(b, std::integral_constant<int, 2>{});
  for (; b < Bp; b += 16) f(b, std::integral_constant<int, 1>{});
}

// f(std::integral_constant<int, r>{}) for r in [1, R]: a tile's rows as a compile-time count.
template <int R = kRows, typename F>
void with_rows(int r, F&& f) {
  if constexpr (R > 1)
    if (r < R) return with_rows<R - 1>(r, f);
  f(std::integral_constant<int, R>{});
}

inline int round16(int b) { return (b + 15) / 16 * 16; }

// --------------------------------------------------------- transposes ----
//
// Between the kernel's feature-major states and the row-major (batch rows)
// arrays of its callers, 16 x 16 blocks at a time through registers
// (transpose16): a column of a row-major array is 16 floats `ld` apart, and
// reading or writing those one float at a time cost more than the step's
// elementwise math.

// Columns [0, n) of rows [0, lanes) of a row-major array (rows `ld` floats
// apart), n, lanes <= 16: r[j] <- column j, its lanes past `lanes` zero, and
// those of rows not in `live` (the padded steps of a batch with lengths).
inline void gather16(const float* src, int64_t ld, int n, int lanes, V (&r)[16], uint16_t live = 0xFFFF) {
  for (int l = 0; l < 16; ++l) r[l] = l < lanes && (live >> l & 1) ? load_first(src + l * ld, n) : zero();
  transpose16(r);
}

// The inverse: r[j] (lanes of column j) into columns [0, n) of rows [0, lanes), zeros into rows not in `live`.
inline void scatter16(V (&r)[16], int n, int lanes, float* dst, int64_t ld, uint16_t live = 0xFFFF) {
  transpose16(r);
  for (int l = 0; l < lanes; ++l) store_first(dst + l * ld, n, live >> l & 1 ? r[l] : zero());
}

// Which rows of each 16 a transpose takes (bit l of live[b0 / 16]: row b0 + l); null: all of them.
inline uint16_t rows_of(const uint16_t* live, int b0) { return live ? live[b0 / 16] : 0xFFFF; }

// Columns [r0, r1) of B rows of `ld` floats into rows [r0, r1) of a (., Bp)
// feature-major array, its padding lanes zero, and the lanes of rows not in `live`.
void transpose_in(const float* src, int B, int64_t ld, float* dst, int Bp, int r0, int r1,
                  const uint16_t* live = nullptr) {
  V r[16];
  for (int c0 = r0; c0 < r1; c0 += 16) {
    const int n = std::min(16, r1 - c0);
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      gather16(src + b0 * ld + c0, ld, n, std::min(16, B - b0), r, rows_of(live, b0));
      for (int j = 0; j < n; ++j) store(dst + int64_t{c0 + j} * Bp + b0, r[j]);
    }
  }
}

// Rows [r0, r1) of a (., Bp) feature-major array into columns [r0, r1) of B rows of `ld` floats; rows
// not in `live` get zeros.
void transpose_out(const float* src, int Bp, int r0, int r1, int B, float* dst, int64_t ld,
                   const uint16_t* live = nullptr) {
  V r[16];
  for (int c0 = r0; c0 < r1; c0 += 16) {
    const int n = std::min(16, r1 - c0);
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      for (int j = 0; j < 16; ++j)
        r[j] = j < n ? load(src + int64_t{c0 + j} * Bp + b0) : zero();
      scatter16(r, n, std::min(16, B - b0), dst + b0 * ld + c0, ld, rows_of(live, b0));
    }
  }
}

// Where row (t, b) of a sequence array starts, in rows: time-major (T, B, .)
// arrays have strides (B, 1), batch-major (B, T, .) ones (1, T). The kernel
// takes either, so that jaxrnn.scan's default batch-major layout costs no
// transposes around the call. A call may run steps [first, first + T') of a
// longer sequence in place (the checkpointed chunks): its inputs are the whole
// arrays, its step s their step first + s.
struct Rows {
  int64_t t, b, first = 0;
  int64_t at(int step) const { return (first + step) * t; }
};

// A call's masks for the steps it runs, 16 batch rows to a word (bit l of
// [t * blocks + b0 / 16]: row b0 + l at step t):
//   valid: step t is within the row's length (jaxrnn.scan's `lengths`). A
//     padded step freezes the carry and outputs zeros; its input is read as
//     zeros, as the XLA loop replaces padding (NaN and inf included) before
//     computing anything from it. Empty: every row runs every step.
//   reset: the carry starts over from the scan's initial carry before step t
//     (`resets`), only at valid steps: a padded step changes nothing, its
//     reset flag included. Empty: no resets.
struct Masks {
  std::vector<uint16_t> valid, reset;
  int blocks = 0;
  bool lengths() const { return !valid.empty(); }
  bool resets() const { return !reset.empty(); }
  const uint16_t* valid_row(int t) const { return valid.empty() ? nullptr : valid.data() + int64_t{t} * blocks; }
  uint16_t live(int t, int b0) const { return rows_of(valid_row(t), b0); }
  uint16_t restarts(int t, int b0) const { return reset.empty() ? 0 : reset[int64_t{t} * blocks + b0 / 16]; }
  // The same for one row b, as all 16 lanes or none: the small layout's vectors are one row's units.
  uint16_t live_row(int t, int b) const { return live(t, b) >> b % 16 & 1 ? 0xFFFF : 0; }
  uint16_t restarts_row(int t, int b) const { return restarts(t, b) >> b % 16 & 1 ? 0xFFFF : 0; }
};

// lengths: (B,) or null; resets: (T_all, B) time-major, or null. Step t of the call is step first + t of both.
Masks masks_for(const int32_t* lengths, const uint8_t* resets, int T, int B, int64_t first) {
  Masks m;
  m.blocks = (B + 15) / 16;
  auto bits = [&](auto on) {
    std::vector<uint16_t> out(int64_t{T} * m.blocks, 0);
    for (int t = 0; t < T; ++t)
      for (int b = 0; b < B; ++b)
        if (on(first + t, b)) out[int64_t{t} * m.blocks + b / 16] |= static_cast<uint16_t>(1u << (b % 16));
    return out;
  };
  if (lengths) m.valid = bits([&](int64_t t, int b) { return t < lengths[b]; });
  if (resets)
    m.reset = bits([&](int64_t t, int b) { return resets[t * B + b] != 0 && (!lengths || t < lengths[b]); });
  return m;
}

// ----------------------------------------------------------------- cells ----

// What a cell adds to the shared loop:
//   kGates: its gate blocks of H columns in w_i and w_h (and in b);
//   kSlots: accumulator slots per unit, in a forward tile, and dG's blocks of H per step (the gradient of
//     each slot's pre-activation); a cell says which slot each of its gate blocks of w_i (the x_t rows of
//     the step's matmul, kXSlot) and of w_h (the h_{t-1} rows, kHSlot) adds into. The LSTM's gates take
//     both halves summed; the GRU keeps h W_hn (slot 3) apart from x W_in (slot 2), because r multiplies
//     it alone. The tiles hold kSlots slots of as many units as the register file fits (kForwardUnits,
//     kSmallGroups): a one-slot cell's tiles hold more units, not empty slots;
//   kKept: blocks of H kept per step and batch row for the backward pass (cell_step's `kept`);
//   kMemory: a memory cell c in the carry (the LSTM's), beside h;
//   kBypass: a part of d h_{t-1} that does not go through the matmul (the GRU's z d h_t), left in `dc`.
struct Lstm {
  static constexpr int kGates = 4, kSlots = 4, kKept = 5;
  static constexpr bool kMemory = true, kBypass = false;
  static constexpr int kXSlot[4] = {0, 1, 2, 3}, kHSlot[4] = {0, 1, 2, 3};
};
struct Gru {
  static constexpr int kGates = 3, kSlots = 4, kKept = 5;
  static constexpr bool kMemory = false, kBypass = true;
  static constexpr int kXSlot[3] = {0, 1, 2}, kHSlot[3] = {0, 1, 3};
};
// h_t = phi(x_t W_i + h_{t-1} W_h + b), phi tanh, relu or the identity (jaxrnn.vanilla's activation): one
// gate, and the backward pass needs only h_t.
enum class Activation : int64_t { kTanh = 0, kRelu = 1, kIdentity = 2 };  // the FFI attribute "activation"
template <Activation A>
struct Vanilla {
  static constexpr int kGates = 1, kSlots = 1, kKept = 1;
  static constexpr bool kMemory = false, kBypass = false;
  static constexpr int kXSlot[1] = {0}, kHSlot[1] = {0};
  static constexpr Activation kActivation = A;
};
template <class Cell>
constexpr bool kIsVanilla = false;
template <Activation A>
constexpr bool kIsVanilla<Vanilla<A>> = true;
// jaxrnn_cell_blocks reads the vanilla cell's blocks off tanh's: the same for every activation.
static_assert(Vanilla<Activation::kRelu>::kKept == Vanilla<Activation::kTanh>::kKept &&
              Vanilla<Activation::kIdentity>::kKept == Vanilla<Activation::kTanh>::kKept);
constexpr int kMaxSlots = 4;  // the most slots of any cell: the biases' pointers (one per slot)

// The elementwise step on 16 lanes, the same in both layouts (lanes: batch rows in the wide one, units
// in the small one), so that both give the same bits. From the slots' pre-activations `s`: h_t,
// c_t into `c` (LSTM), and what the backward pass keeps.
template <class Cell>
JAXRNN_INLINE V cell_step(const V (&s)[Cell::kSlots], V h_prev, V c_prev, V& c, V (&kept)[Cell::kKept]) {
  if constexpr (kIsVanilla<Cell>) {
    (void)h_prev, (void)c_prev, (void)c;
    if constexpr (Cell::kActivation == Activation::kTanh) kept[0] = tanh16(s[0]);
    // jnp.maximum(x, 0): NaN stays NaN (x <= 0 is false for it; a select on x > 0 would make it 0), and -0
    // becomes +0 (a select on x < 0 would keep -0).
    else if constexpr (Cell::kActivation == Activation::kRelu) kept[0] = select(s[0] <= zero(), zero(), s[0]);
    else kept[0] = s[0];
    return kept[0];
  } else if constexpr (std::is_same_v<Cell, Lstm>) {
    const V i = sigmoid16(s[0]), f = sigmoid16(s[1]);
    const V g = tanh16(s[2]), o = sigmoid16(s[3]);
    c = fma(f, c_prev, i * g);
    // c_{t-1}, not c_t: the backward pass recomputes c_t from it exactly as here, and reads the
    // carry a step started from, which for a padded or reset row is not the previous step's c_t.
    kept[0] = i, kept[1] = f, kept[2] = g, kept[3] = o, kept[4] = c_prev;
    return o * tanh16(c);
  } else {  // h = (1 - z) n + z h_{t-1}, n = tanh(x W_in + b_in + r (h W_hn + b_hn))
    const V r = sigmoid16(s[0]), z = sigmoid16(s[1]);
    const V hn = s[3];
    const V n = tanh16(fma(r, hn, s[2]));
    kept[0] = r, kept[1] = z, kept[2] = n, kept[3] = hn, kept[4] = h_prev;
    return fma(z, h_prev - n, n);
  }
}

// Its derivative, the same in both layouts: from d ys (`dy`), the carried d h_t and d c_t (LSTM) and the
// kept activations, dG's slots `d`, and the parts of d h_{t-1} and d c_{t-1} that do not go through
// the matmul (see Backward::rows): the LSTM's d c_{t-1} into `dc`, and with lengths what passed a padded
// step into `dh` (the vanilla cell's too); the GRU's z d h_t (plus, with lengths, the same) into `dc`.
// `live`: the lanes whose step is valid. A padded step passed its carry through and output zeros: it gets
// no cotangent (d ys there is dropped), and the carried one goes past it to the step before, as in the XLA
// loop.
template <class Cell, bool lengths>
JAXRNN_INLINE void cell_grads(const V (&kept)[Cell::kKept], V dy, uint16_t live, V& dh, V& dc,
                              V (&d)[Cell::kSlots]) {
  const V one = splat(1.f);
  const uint16_t padded = static_cast<uint16_t>(~live);
  const V dh_carried = dh;
  const V d_h = keep(live, dy + dh_carried);
  if constexpr (kIsVanilla<Cell>) {
    (void)dc;
    const V h = kept[0];
    if constexpr (Cell::kActivation == Activation::kTanh) {
      // JAX's derivative of tanh at its output h, (g + g h)(1 - h), transposed as JAX does: e = g (1 - h),
      // then e + e h. Not g (1 - h^2): with g infinite they differ at h = 0 (inf + inf 0 is NaN), and the
      // XLA loop's NaN and inf are the contract.
      const V e = d_h * (one - h);
      d[0] = e + e * h;
    } else if constexpr (Cell::kActivation == Activation::kRelu) {
      // jax.nn.relu's derivative, select(x > 0, g, 0): x > 0 exactly where h = relu(x) > 0 (NaN: neither).
      d[0] = select(zero() < h, d_h, zero());
    } else {
      d[0] = d_h;
    }
    if constexpr (lengths) dh = keep(padded, dh_carried);  // what passed a padded step; see rows
  } else if constexpr (std::is_same_v<Cell, Lstm>) {
    const V i = kept[0], f = kept[1], gg = kept[2], o = kept[3], c_prev = kept[4];
    const V tc = tanh16(fma(f, c_prev, i * gg));  // c_t as forward made it
    const V dc_carried = dc;
    // d c_t = (carried d c_t) + d h_t * o * (1 - tanh(c_t)^2)
    const V d_c = fma(d_h * o, fnma(tc, tc, one), keep(live, dc_carried));
    d[0] = (d_c * gg) * (i * (one - i));
    d[1] = (d_c * c_prev) * (f * (one - f));
    d[2] = (d_c * i) * fnma(gg, gg, one);
    d[3] = (d_h * tc) * (o * (one - o));
    dc = d_c * f;  // d c_{t-1}, through the forget gate
    if constexpr (lengths) {  // plus what passed a padded step; d h_{t-1} starts from it (see rows)
      dc = dc + keep(padded, dc_carried);
      dh = keep(padded, dh_carried);
    }
  } else {
    const V rr = kept[0], z = kept[1], nn = kept[2], hn = kept[3], h_prev = kept[4];
    d[2] = (d_h * (one - z)) * fnma(nn, nn, one);
    d[1] = (d_h * (h_prev - nn)) * (z * (one - z));
    d[0] = (d[2] * hn) * (rr * (one - rr));
    d[3] = d[2] * rr;
    dc = d_h * z;  // d h_{t-1} through z, added by the matmul
    if constexpr (lengths) dc = dc + keep(padded, dh_carried);
  }
}

// --------------------------------------------------------------- forward ----

// Columns [r0, r1) of B rows (`ld` floats apart) into those of B rows at dst (`to_ld` apart); rows not in
// `live` (bit b % 16 of live[b / 16]; null: all) get zeros.
inline void copy_rows(const float* src, int64_t ld, int B, const uint16_t* live, int r0, int r1, float* dst,
                      int64_t to_ld) {
  for (int b = 0; b < B; ++b) {
    float* to = dst + b * to_ld + r0;
    if (rows_of(live, b / 16 * 16) >> b % 16 & 1) std::memcpy(to, src + b * ld + r0, sizeof(float) * (r1 - r0));
    else std::memset(to, 0, sizeof(float) * (r1 - r0));
  }
}

template <class Cell>
struct Forward {
  static constexpr int G = Cell::kGates, S = Cell::kSlots, kKept = Cell::kKept;
  static constexpr int kUnits = kForwardUnits<Cell>;  // units per tile
  int T, B, I, H, Bp, K;  // K = I + H
  Rows in, out;           // of x; of ys and operands
  const float *x, *w_i, *w_h;
  const float* bias[kMaxSlots];  // each slot's H biases (the first S)
  float* wp;                     // packed weights, see pack()
  // res: (T, kKept H, Bp), per step LSTM i, f, g, o, c_{t-1}; GRU r, z, n, h W_hn + b_hn, h_{t-1}; vanilla h_t
  float *ys, *res;
  float* operands;  // [x_t, h_{t-1}] per step, each step's matmul operand; null for inference
  float* cT;        // LSTM: (H, Bp), the running memory cell
  float* a[2];      // (K, Bp) twice: [x_t^T; h_{t-1}^T], double-buffered
  const Masks* m;
  const float *h_init, *c_init;  // (H, Bp): the carry a reset starts over from (c: LSTM); null without resets

  // Weights of units [u0, u0 + U) as a (K, G, U) block, blocks one after the
  // other; each share packs the blocks it reads. Eight blocks at a time, so
  // that every cache line of a weight row read is used whole (one block at a
  // time read each line eight times over, a row of G H floats apart). The
  // units past the last whole tile (H not a multiple of kUnits) are blocks of
  // one unit each (see phase).
  void pack(int ulo, int uhi) const {
    for (int v0 = ulo; v0 < uhi; v0 += 8 * kUnits) {
      const int v1 = std::min(uhi, v0 + 8 * kUnits);
      for (int k = 0; k < K; ++k) {
        const float* row = k < I ? w_i + int64_t{k} * G * H : w_h + int64_t{k - I} * G * H;
        for (int u0 = v0, U; u0 < v1; u0 += U) {
          U = u0 + kUnits <= H ? kUnits : 1;
          float* to = wp + int64_t{u0} * G * K + int64_t{k} * G * U;
          for (int g = 0; g < G; ++g)
            for (int j = 0; j < U; ++j) to[g * U + j] = row[g * H + u0 + j];
        }
      }
    }
  }

  // acc[slot[g] * U + j] += w[k, g, j] * col[k] for k in [k0, k1).
  template <int U, int NB>
  static void accumulate(V (&acc)[S * U][NB], const float* w, const float* col, int Bp, int k0, int k1,
                         const int (&slot)[G]) {
    for (int k = k0; k < k1; ++k) {
      V v[NB];
      for (int s = 0; s < NB; ++s) v[s] = load(col + int64_t{k} * Bp + 16 * s);
      if constexpr (!kWideRegisters)
        for (int s = 0; s < NB; ++s) in_registers(v[s]);
#pragma GCC unroll 16
      for (int c = 0; c < G * U; ++c) {
        const V wc = splat(w[k * G * U + c]);
        for (int s = 0; s < NB; ++s) acc[slot[c / U] * U + c % U][s] = fma(wc, v[s], acc[slot[c / U] * U + c % U][s]);
      }
    }
  }

  template <int U, int NB>
  void tile(int t, int u0, int b0, const float* at, float* h_next) const {
    V acc[S * U][NB];
    for (int c = 0; c < S * U; ++c)
      for (int s = 0; s < NB; ++s) acc[c][s] = splat(bias[c / U][u0 + c % U]);
    const float* w = wp + int64_t{u0} * G * K;
    accumulate<U, NB>(acc, w, at + b0, Bp, 0, I, Cell::kXSlot);
    accumulate<U, NB>(acc, w, at + b0, Bp, I, K, Cell::kHSlot);
    for (int j = 0; j < U; ++j) {
      const int u = u0 + j;
      for (int s = 0; s < NB; ++s) {
        const int64_t at_u = int64_t{u} * Bp + b0 + 16 * s;
        // A padded step (not in `live`) keeps the carry: h and c are blended with their previous values.
        const uint16_t live = m->live(t, b0 + 16 * s);
        const V h_prev = load(at + int64_t{I} * Bp + at_u);
        const V c_prev = Cell::kMemory ? load(cT + at_u) : zero();
        V slots[S];
        for (int q = 0; q < S; ++q) slots[q] = acc[q * U + j][s];
        V kept[kKept], c;
        const V h = cell_step<Cell>(slots, h_prev, c_prev, c, kept);
        if constexpr (Cell::kMemory) store(cT + at_u, select(live, c, c_prev));
        store(h_next + at_u, select(live, h, h_prev));
        if (res) {
          float* r = res + int64_t{t} * kKept * H * Bp + at_u;
          for (int q = 0; q < kKept; ++q) store(r + int64_t{q} * H * Bp, kept[q]);
        }
      }
    }
  }

  template <int U>
  void units(int t, int u0, const float* at, float* h_next) const {
    for_batch_tiles<kForwardBatch>(Bp, [&](int b0, auto nb) { tile<U, decltype(nb)::value>(t, u0, b0, at, h_next); });
  }

  // Units [ulo, uhi) of the feature-major `h` into B rows of `ld` floats, zeros for rows not in `live`.
  void put_h(const float* h, int ulo, int uhi, float* dst, int64_t ld, const uint16_t* live = nullptr) const {
    transpose_out(h, Bp, ulo, uhi, B, dst, ld, live);
  }

  // Step t's x_t^T into `a`, rows [r0, r1); for training also x_t into its operand row. A padded
  // step's x_t is read as zeros (see Masks).
  void take_x(int t, float* a, int r0, int r1) const {
    const float* x_t = x + in.at(t) * I;
    const uint16_t* live = m->valid_row(t);
    transpose_in(x_t, B, in.b * I, a, Bp, r0, r1, live);
    if (operands) copy_rows(x_t, in.b * I, B, live, r0, r1, operands + out.at(t) * K, out.b * K);
  }

  // The rows that start over at step t take the initial carry (units [ulo, uhi) of h, and of the LSTM's c).
  void restart(int t, int ulo, int uhi, float* h) const {
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      const uint16_t k = m->restarts(t, b0);
      if (!k) continue;
      for (int u = ulo; u < uhi; ++u) {
        const int64_t at_u = int64_t{u} * Bp + b0;
        store(h + at_u, select(k, load(h_init + at_u), load(h + at_u)));
        if constexpr (Cell::kMemory) store(cT + at_u, select(k, load(c_init + at_u), load(cT + at_u)));
      }
    }
  }

  // Phase 0 packs the weights and takes x_0; phase t + 1 is step t. Share j of
  // n owns a contiguous range of units (and of x's columns to transpose).
  void phase(int64_t p, int j, int n) const {
    const int groups = (H + kUnits - 1) / kUnits;
    const Range mine = share(groups, j, n), cols = share(I, j, n);
    const int ulo = std::min(H, mine.lo * kUnits), uhi = std::min(H, mine.hi * kUnits);
    if (p == 0) {
      pack(ulo, uhi);
      take_x(0, a[0], cols.lo, cols.hi);
      if (m->resets()) restart(0, ulo, uhi, a[0] + int64_t{I} * Bp);
      if (operands) put_h(a[0] + int64_t{I} * Bp, ulo, uhi, operands + I, out.b * K);
      return;
    }
    const int t = static_cast<int>(p - 1);
    const float* at = a[t & 1];
    float* next = a[(t + 1) & 1];
    float* h_next = next + int64_t{I} * Bp;
    for (int gi = mine.lo; gi < mine.hi; ++gi) {
      const int u0 = gi * kUnits;
      if (u0 + kUnits <= H) units<kUnits>(t, u0, at, h_next);
      else
        for (int u = u0; u < H; ++u) units<1>(t, u, at, h_next);  // the tail, a unit at a time (see pack)
    }
    put_h(h_next, ulo, uhi, ys + out.at(t) * H, out.b * H, m->valid_row(t));
    if (t + 1 < T) {
      take_x(t + 1, next, cols.lo, cols.hi);
      if (m->resets()) restart(t + 1, ulo, uhi, h_next);
      if (operands) put_h(h_next, ulo, uhi, operands + out.at(t + 1) * K + I, out.b * K);
    }
  }
};

// -------------------------------------------------------------- backward ----

// Memory that the next elementwise pass will read, fetched into L2 a line at a
// time from inside a matmul. The backward's elementwise pass streams each
// step's kept activations (5 H Bp floats) from DRAM; on its own it waited on
// them (LSTM, T=1000, B=32, H=256: 19 of the backward loop's 53 ms), while the
// matmul before it keeps the cores busy and leaves the memory idle.
struct Prefetch {
  struct Span {
    const char* p;
    int64_t rows, stride, lines;  // rows of `lines` cache lines, `stride` bytes apart
  };
  Span spans[8];
  int n = 0, i = 0;
  int64_t row = 0, line = 0;

  void add(const float* p, int64_t floats, int64_t rows = 1, int64_t stride = 0) {
    if (floats <= 0 || rows <= 0 || n == 8) return;
    const auto at = reinterpret_cast<uintptr_t>(p);
    spans[n++] = {reinterpret_cast<const char*>(at & ~uintptr_t{63}), rows, stride * 4,
                  static_cast<int64_t>((at % 64 + 4 * floats + 63) / 64)};
  }
  // Fetch the next line, if any is left.
  void next() {
    if (i == n) return;
    const Span& s = spans[i];
    prefetch_l2(s.p + row * s.stride + 64 * line);
    if (++line < s.lines) return;
    line = 0;
    if (++row < s.rows) return;
    row = 0, ++i;
  }
};

// Row r of [W_i; W_h], rows of GH floats.
inline const float* weight_row(const float* w_i, const float* w_h, int I, int GH, int r) {
  return r < I ? w_i + int64_t{r} * GH : w_h + int64_t{r - I} * GH;
}

// R <= 16 rows of GH weights as a (GH, stride) block, stride R or 16: block[k stride + j] = row j's k-th
// weight (zeros in lanes [R, 16) with stride 16), 16 k at a time through a register transpose.
inline void pack_rows(const float* const* row, int R, int GH, float* block, int stride) {
  V v[16];
  for (int k0 = 0; k0 < GH; k0 += 16) {
    const int n = std::min(16, GH - k0);
    for (int j = 0; j < 16; ++j) v[j] = j < R ? load_first(row[j] + k0, n) : zero();
    transpose16(v);  // v[i]'s first R lanes: the R rows' weight k0 + i
    if (stride == 16)
      for (int i = 0; i < n; ++i) store(block + int64_t{k0 + i} * 16, v[i]);
    else if (R == kRows)
      for (int i = 0; i < n; ++i) store_first<kRows>(block + int64_t{k0 + i} * R, v[i]);
    else
      for (int i = 0; i < n; ++i) store_first(block + int64_t{k0 + i} * R, R, v[i]);
  }
}

// ------------------------------------------------------ weight gradients ----
//
// [W_i; W_h]'s gradient is the sum over steps and batch rows of [x_t, h_{t-1}]^T dG_t, one product after
// the recurrence as in cuDNN, which the backward call computes itself, a chunk of steps at a time. Its
// loop writes each step's dG rows into a ring of two chunks (DgRing). The loop runs backwards in time, so
// chunk c's rows are all out once the phase of step t = c steps (its lowest) begins; in that phase each
// share adds the chunk's product into its part of d W_i and d W_h, while gates(t - 1) starts chunk c - 1 in
// the other half. Against dG as an output of the call with XLA's matmul after it: the rows are read back
// from cache, not memory, and the call asks XLA for no T B S H floats of dG, which alone put an LSTM
// training step's temp buffer at B = 32, T = 100, H = 256 over glibc's 32 MiB mmap threshold (13 of its
// 39 MB), so that it was mapped and zeroed afresh on every call (docs/kernels.md has the figures). d W_i
// takes dG's slots kXSlot and d W_h its slots kHSlot: one exact product each, where one product over the
// GRU's four slots cost a third more.
//
// Each element of d W is one chain of FMAs, chunk by chunk from the last steps' down, within a chunk step
// by step and row by row, whichever thread or tile computes it; both layouts chunk alike (dw_chunk), so
// that they give the same bits here as everywhere else.

// The small layout's chunk of steps for d x_t (and x_t W_i forward): about 64 rows of dG (or x); for large
// weights x_steps takes a longer one.
inline int x_chunk(int B) { return std::max(1, 64 / B); }

// Steps per chunk of the weight gradients: about 256 rows of dG (a d W tile is loaded and stored once a
// chunk, for 256 FMAs a register: under 1% of its work; not tuned further), and a whole number of
// x_chunk(B), so that the small layout's d x_t chunks lie inside one.
inline int dw_chunk(int B) {
  B = std::max(B, 1);  // an empty batch: chunks of no rows, which set d W to zeros
  const int x = x_chunk(B);
  return x * std::max(1, 256 / (x * B));
}

// Weights [W_i; W_h] of this many bytes or more have outgrown the caches: the kernels built for AVX-512 run
// any batch of them in the small layout (jaxrnn.native.layout_for, which reads this value through
// jaxrnn_large_weight_bytes), which then takes x_t W_i and d x_t a weight-gradient chunk at a time (x_steps).
// Measured: the two layouts level from 2 to 8 MiB, the small one ahead from 13.5, by up to 2.4x (docs/kernels.md).
constexpr int64_t kLargeWeightBytes = int64_t{8} << 20;

// The small layout's chunk of steps for x_t W_i and d x_t, given the weights [W_i; W_h], (I + H) x G H
// floats: x_chunk, or, for large weights, the weight gradients' whole chunk, about 256 rows: W_i is then
// read from memory once per chunk, and a chunk of 64 rows would read it four times as often (an LSTM at
// B = 32, I = H = 1024: 16 MiB of W_i every two steps, beside W_h's 16 every step). Either way a chain of
// FMAs is the same: the chunk changes no bits.
inline int x_steps(int B, int I, int H, int G) {
  return int64_t{I + H} * G * H * 4 >= kLargeWeightBytes ? dw_chunk(B) : x_chunk(B);
}

// dG's rows, a chunk of `steps` steps at a time: step t's in half (t / steps) % 2.
struct DgRing {
  float* data;
  int steps, B;
  int64_t ld;  // floats from a row to the next: stride(S H)
  // A row of `width` floats padded to an odd number of 64-byte lines, so that the rows the weight
  // gradients' tiles read one after another fall in different cache sets: at S H = 1024 (an LSTM's at
  // H = 256) unpadded rows 4 KiB apart all fell in one set of L1, which holds 8 of them.
  static int64_t stride(int64_t width) {
    const int64_t lines = (width + 15) / 16;
    return 16 * (lines | 1);
  }
  // Floats for a call of T steps: two chunks, or T steps if fewer (the rows row() reaches).
  static int64_t floats(int T, int B, int64_t width) {
    return std::min<int64_t>(T, 2 * int64_t{dw_chunk(B)}) * B * stride(width);
  }
  float* row(int t, int b) const {
    const int64_t half = (t / steps) % 2;
    return data + ((half * steps + t % steps) * B + b) * ld;
  }
};

// Tiles of d W: kDwRows rows by kDwVectors vectors of 16 columns (AVX-512: 24 of 32 registers of
// accumulators; AVX2: 12 of 16). The shares split strips of kDwVectors vectors by blocks of kDwBlock rows.
constexpr int kDwRows = 6;
constexpr int kDwVectors = kWideRegisters ? 4 : 1;
constexpr int kDwBlock = 8 * kDwRows;

template <class Cell>
struct WeightGradient {
  static constexpr int G = Cell::kGates;
  static constexpr int kStrip = 16 * kDwVectors;  // columns of a tile
  int T, B, I, H;
  Rows rows;               // of the operands (the backward call's `out`)
  const float* operands;   // [x_t, h_{t-1}] rows of I + H floats, as the forward call kept them
  DgRing ring;
  float *dw_i, *dw_h;      // (I, G H), (H, G H)

  // `ring` holds DgRing::floats(T, B, S H) floats. A call of no steps has no chunk: d W is zero.
  WeightGradient(int T, int B, Rows rows, int I, int H, const float* operands, float* ring, float* dw_i,
                 float* dw_h)
      : T(T), B(B), I(I), H(H), rows(rows), operands(operands), ring{ring, dw_chunk(B), B, DgRing::stride(int64_t{Cell::kSlots} * H)},
        dw_i(dw_i), dw_h(dw_h) {
    if (T == 0) {
      std::fill(dw_i, dw_i + int64_t{I} * G * H, 0.f);
      std::fill(dw_h, dw_h + int64_t{H} * G * H, 0.f);
    }
  }

  int per_gate() const { return (H + kStrip - 1) / kStrip; }    // strips of a gate's block of H columns
  int x_blocks() const { return (I + kDwBlock - 1) / kDwBlock; }
  int blocks() const { return x_blocks() + (H + kDwBlock - 1) / kDwBlock; }  // of W_i's rows, then W_h's

  // The backward loop's phase of step t, share j of n: the chunk starting at t, if one does.
  void phase(int t, int j, int n) const {
    if (t % ring.steps != 0) return;
    const int t1 = std::min(T, t + ring.steps);
    const Range mine = share(G * per_gate() * blocks(), j, n);  // strip-major: a share's strips keep their dG
    for (int u = mine.lo; u < mine.hi; ++u) {
      const int strip = u / blocks(), block = u % blocks();
      const int gate = strip / per_gate(), c0 = strip % per_gate() * kStrip, cols = std::min(kStrip, H - c0);
      const bool x = block < x_blocks();
      const int r0 = (x ? block : block - x_blocks()) * kDwBlock, r1 = std::min(x ? I : H, r0 + kDwBlock);
      const int64_t col = int64_t{x ? Cell::kXSlot[gate] : Cell::kHSlot[gate]} * H + c0;
      float* out = (x ? dw_i : dw_h) + int64_t{r0} * G * H + gate * H + c0;
      part(t, t1, (x ? 0 : I) + r0, r1 - r0, col, out, cols, t1 == T);
    }
  }

  // Rows [0, M) of a strip of n columns at `out`, from operand columns [m0, m0 + M) and dG columns from
  // `col`, over steps [t0, t1): set (`first`: the chunk of the last step, the first computed), else added to.
  void part(int t0, int t1, int m0, int M, int64_t col, float* out, int n, bool first) const {
    auto run = [&](auto vectors, auto tail) {
      for (int r = 0; r < M; r += kDwRows)
        with_rows<kDwRows>(std::min(kDwRows, M - r), [&](auto R) {
          tile<decltype(R)::value, decltype(vectors)::value, decltype(tail)::value>(
              t0, t1, m0 + r, col, out + int64_t{r} * G * H, n, first);
        });
    };
    if (n == kStrip) return run(std::integral_constant<int, kDwVectors>{}, std::false_type{});
    with_rows<kDwVectors>((n + 15) / 16, [&](auto vectors) { run(vectors, std::true_type{}); });  // a count of vectors
  }

  template <int R, int NV, bool kTail>
  void tile(int t0, int t1, int m0, int64_t col, float* out, int n, bool first) const {
    const int64_t K = I + H, ld = int64_t{G} * H;
    auto lanes = [n](int s) { return std::min(16, n - 16 * s); };
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < NV; ++s)
        acc[r][s] = first ? zero() : kTail ? load_first(out + r * ld + 16 * s, lanes(s)) : load(out + r * ld + 16 * s);
    for (int t = t0; t < t1; ++t) {
      const float* at = operands + rows.at(t) * K + m0;
      for (int b = 0; b < B; ++b) {
        const float* a = at + b * rows.b * K;
        const float* d = ring.row(t, b) + col;
        V v[NV];
#pragma GCC unroll 4
        for (int s = 0; s < NV; ++s) v[s] = kTail ? load_first(d + 16 * s, lanes(s)) : load(d + 16 * s);
        // Unrolled whole, so that the accumulators stay in registers (GCC otherwise kept them in memory).
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const V ar = splat(a[r]);
#pragma GCC unroll 4
          for (int s = 0; s < NV; ++s) acc[r][s] = fma(ar, v[s], acc[r][s]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < NV; ++s) {
        if (kTail) store_first(out + r * ld + 16 * s, lanes(s), acc[r][s]);
        else store(out + r * ld + 16 * s, acc[r][s]);
      }
  }
};

template <class Cell>
struct Backward {
  static constexpr int G = Cell::kGates, S = Cell::kSlots, kKept = Cell::kKept;
  int T, B, I, H, Bp;
  Rows in, out;     // of dys; of dx and the operands
  const float *res, *dys;
  const float *w_i, *w_h;
  float* wp;        // [W_i; W_h] packed as (G H, kRows) blocks of rows, see pack()
  const WeightGradient<Cell>* dw;  // and its ring of dG rows, S H each: LSTM d(i, f, g, o) pre-activations;
                                   // GRU d r, d z, d(x W_in), d(h W_hn); vanilla d(x W_i + h W_h + b)
  float* dx;        // I per step
  float* dh;        // (H, Bp): d h_t from step t+1, then d h_{t-1}
  float* dc;        // (H, Bp): LSTM d c_t; GRU the part of d h_{t-1} that bypasses W_h, z d h_t; vanilla unused
  float* dxt;       // (I, Bp): d x_t, feature-major, on its way out
  float* g[2];      // (S H, Bp) twice: dG_t^T, all slots, double-buffered
  float* db;        // (S H, 16): sums of dG, each lane over its own batch rows (real ones only)
  const Masks* m;
  float *dh_init, *dc_init;  // (H, Bp): the initial carry's gradient from the steps that reset to it

  // Rows [lo, hi) of [W_i; W_h] (I + H rows of G H) as (G H, R) blocks of
  // kRows rows, so that a tile reads its block contiguously (pack_rows).
  void pack(int lo, int hi) const {
    for (int r0 = lo; r0 < hi; r0 += kRows) {
      const int R = std::min(kRows, hi - r0);
      const float* row[kRows];
      for (int j = 0; j < R; ++j) row[j] = weight_row(w_i, w_h, I, G * H, r0 + j);
      pack_rows(row, R, G * H, wp + int64_t{r0} * G * H, R);
    }
  }

  // The step's derivative for units [ulo, uhi), given d h_t (its output's
  // cotangent plus what step t+1 sent back). Units go 16 at a time so that
  // d ys is read, and dG's rows written, through 16 x 16 transposes a row of 16
  // floats at once: rows are H or S H floats apart, and 16 single-float stores
  // that far apart land in one L1 set. The padded batch rows are
  // computed too, and need not be finite (their zero inputs times an infinite
  // weight are NaN): they stay out of the bias gradient, the one sum across
  // lanes; everything else reads them lane by lane and never writes them out.
  void gates(int t, int ulo, int uhi, float* gt) const {
    if (m->lengths()) gates<true>(t, ulo, uhi, gt);
    else gates<false>(t, ulo, uhi, gt);
  }
  // With `lengths` a compile-time constant: GCC 12 at -O3, if-converting the
  // loop over units for the vectoriser, turned `if (m->lengths()) v = v + w`
  // into an add masked to lane 0 alone (AVX-512; the GRU's gradients with lengths).
  template <bool lengths>
  void gates(int t, int ulo, int uhi, float* gt) const {
    const float* r = res + int64_t{t} * kKept * H * Bp;
    const float* dy = dys + in.at(t) * H;
    float* to = dw->ring.row(t, 0);
    const int64_t dy_ld = in.b * H, to_ld = dw->ring.ld;
    V dy_block[16], dg_block[S][16] = {};  // [unit], [slot][unit]: 16 lanes each
    for (int u0 = ulo; u0 < uhi; u0 += 16) {
      const int n = std::min(16, uhi - u0);
      for (int b0 = 0; b0 < Bp; b0 += 16) {
        const int lanes = std::min(16, B - b0);
        gather16(dy + b0 * dy_ld + u0, dy_ld, n, lanes, dy_block);
        const uint16_t live = m->live(t, b0);
        for (int j = 0; j < n; ++j) {
          const int64_t at = int64_t{u0 + j} * Bp + b0;
          V kept[kKept];
          for (int q = 0; q < kKept; ++q) kept[q] = load(r + int64_t{q} * H * Bp + at);
          V d[S], d_h = load(dh + at), d_c = Cell::kMemory ? load(dc + at) : zero();
          cell_grads<Cell, lengths>(kept, dy_block[j], live, d_h, d_c, d);
          if constexpr (!Cell::kBypass && lengths) store(dh + at, d_h);
          if constexpr (Cell::kMemory || Cell::kBypass) store(dc + at, d_c);
          for (int q = 0; q < S; ++q) {  // the bias gradient sums the batch's rows, not the padding's
            float* sum = db + int64_t{q * H + u0 + j} * 16;
            const V so_far = load(sum);
            store(sum, select(first(lanes), so_far + d[q], so_far));
            store(gt + int64_t{q * H} * Bp + at, d[q]);
            dg_block[q][j] = d[q];
          }
        }
        for (int q = 0; q < S; ++q) {
          float* o = to + b0 * to_ld + q * H + u0;
          scatter16(dg_block[q], n, lanes, o, to_ld);
        }
      }
    }
  }

  // Rows [r0, r0 + R) of [d x_t; d h_{t-1}] = [W_i; W_h] dG_t^T for batch
  // lanes [b0, b0 + 16 NB), into `to` (row r0's lanes), starting from `from`
  // (or zero): gate block k of a W_i row multiplies dG's slot kXSlot[k], of a
  // W_h row kHSlot[k] (`slot`).
  template <int R, int NB>
  void tile(int r0, int b0, const int (&slot)[G], const float* gt, const float* from, float* to,
            Prefetch& ahead) const {
    V acc[R][NB];
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s) acc[j][s] = from ? load(from + int64_t{j} * Bp + b0 + 16 * s) : zero();
    for (int gate = 0; gate < G; ++gate) {
      const float* w = wp + (int64_t{r0} * G + int64_t{gate} * R) * H;
      const float* col = gt + int64_t{slot[gate]} * H * Bp + b0;
      for (int k = 0; k < H; ++k) {
        V v[NB];
        for (int s = 0; s < NB; ++s) v[s] = load(col + int64_t{k} * Bp + 16 * s);
        if (k % 4 == 3) ahead.next();
#pragma GCC unroll 16
        for (int j = 0; j < R; ++j) {
          const V wj = splat(w[k * R + j]);
          for (int s = 0; s < NB; ++s) acc[j][s] = fma(wj, v[s], acc[j][s]);
        }
      }
    }
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s) store(to + int64_t{j} * Bp + b0 + 16 * s, acc[j][s]);
  }

  // Rows [lo, hi) of [d x_t; d h_{t-1}], all lanes. d h_{t-1} starts from
  // what gates() left: the GRU's z d h_t, which bypasses W_h, and with lengths
  // the cotangent that passed a padded step (the LSTM's and the vanilla cell's, in dh itself).
  void rows(int lo, int hi, const float* gt, Prefetch& ahead) const {
    for (int r0 = lo; r0 < hi; r0 += kRows) {
      const bool x = r0 < I;
      const float* from = x ? nullptr
                          : Cell::kBypass ? dc + int64_t{r0 - I} * Bp
                          : m->lengths()  ? dh + int64_t{r0 - I} * Bp
                                          : nullptr;
      float* to = x ? dxt + int64_t{r0} * Bp : dh + int64_t{r0 - I} * Bp;
      const int(&slot)[G] = x ? Cell::kXSlot : Cell::kHSlot;
      auto run = [&](auto rows) {
        for_batch_tiles<kBackwardBatch>(Bp, [&](int b0, auto nb) {
          tile<decltype(rows)::value, decltype(nb)::value>(r0, b0, slot, gt, from, to, ahead);
        });
      };
      with_rows(std::min(kRows, hi - r0), run);
    }
  }

  // The rows that reset at step t started it from the initial carry: their d h_{t-1} (and the LSTM's
  // d c_{t-1}), units [ulo, uhi), goes to the initial carry's gradient, and none to step t - 1.
  void cut(int t, int ulo, int uhi) const {
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      const uint16_t k = m->restarts(t, b0);
      if (!k) continue;
      for (int u = ulo; u < uhi; ++u) {
        const int64_t at = int64_t{u} * Bp + b0;
        for (auto [d, init] : {std::pair{dh, dh_init}, std::pair{dc, dc_init}}) {
          if (!init) continue;  // only the LSTM has a c
          const V v = load(d + at), sum = load(init + at);
          store(init + at, select(k, sum + v, sum));
          store(d + at, keep(static_cast<uint16_t>(~k), v));
        }
      }
    }
  }

  // Share j of n owns a contiguous range of units, and everything a share
  // reads of d h and d c, it wrote itself: only dG_t is read by all. So one
  // phase per step does it all: phase 0 packs the share's rows of W_i and
  // W_h and computes its units' dG_{T-1}; phase p = T - t, for t = T-1 down
  // to 0, computes its units' d h_{t-1} and its share of d x_t from dG_t
  // (every share's, written in phase p - 1), then its units' dG_{t-1} into
  // the other buffer. The input gradient comes out of the same pass over dG_t
  // as d h_{t-1}: as a separate (T B, 4H) x (4H, I) product in XLA it ran at
  // 80% of this machine's matmul rate. In the phase of a chunk's first step, its
  // dG all out, the share adds the chunk's weight gradients into its strips.
  void phase(int64_t p, int j, int n) const {
    const Range mine = share((H + kRows - 1) / kRows, j, n), xs = share((I + kRows - 1) / kRows, j, n);
    const int ulo = std::min(H, mine.lo * kRows), uhi = std::min(H, mine.hi * kRows);
    const int xlo = std::min(I, xs.lo * kRows), xhi = std::min(I, xs.hi * kRows);
    const int t = T - static_cast<int>(p);
    if (p == 0) {
      pack(xlo, xhi);
      pack(I + ulo, I + uhi);
    } else {
      Prefetch ahead;  // what gates(t - 1) reads
      if (t > 0) {
        for (int q = 0; q < kKept; ++q)
          ahead.add(res + ((int64_t{t - 1} * kKept + q) * H + ulo) * Bp, int64_t{uhi - ulo} * Bp);
        ahead.add(dys + in.at(t - 1) * H + ulo, uhi - ulo, B, in.b * H);
      }
      rows(I + ulo, I + uhi, g[t & 1], ahead);
      if (m->resets()) cut(t, ulo, uhi);
      rows(xlo, xhi, g[t & 1], ahead);
      // A padded step's input was read as zeros (see Masks): its gradient is zero, as the XLA loop's.
      transpose_out(dxt, Bp, xlo, xhi, B, dx + out.at(t) * I, out.b * I, m->valid_row(t));
    }
    if (t > 0) gates(t - 1, ulo, uhi, g[(t - 1) & 1]);
    if (p > 0) dw->phase(t, j, n);
  }
};

// -------------------------------------------------------- small batches ----
//
// A second layout for a few batch rows (up to SMALL_BATCH, and any batch of large weights: layout_for in
// __init__.py), where the wide one's 16 lanes of batch rows are mostly padding (a batch of one uses one
// lane in 16). Its lanes run along
// hidden units instead: states are row-major (B, H), and a step is one GEMV-like pass over the weights,
// packed as 16 units of each gate per operand element, in which each weight vector loaded feeds one FMA
// per batch row (the row's operand element broadcast). The backward pass runs its lanes along the rows
// of [W_i; W_h]: d x_t and d h_{t-1} are vectors over those rows, and dG_t's elements are broadcast.
//
// It gives the wide layout's bits, so that either may run any batch: every output float is the same FMA
// chain in the same order (forward: its bias, x_t's elements k = 0..I-1, then h_{t-1}'s; backward: its
// start, then gate by gate k = 0..H-1), fma(a, b, c) rounds a b + c once whichever factor is broadcast,
// the elementwise steps are the same functions (cell_step, cell_grads), and the bias gradient adds row b
// into lane b % 16, step after step, and sums the 16 lanes in the wide layout's order.
// With so few rows a step is bound by reading the weights (an LSTM of H = 256 reads 2 MiB of them a
// step, more than a core's L2), so the forward computes the x_t part of every chain a chunk of steps
// ahead (x_part) and the backward d x_t a chunk of steps behind (x_rows), reading W_i once a chunk, and
// W_h alone stays in L2 from step to step: a chain stopped and resumed through memory is the same chain.
// Threads split units (forward) and rows of [W_i; W_h] (backward) in 16s, and meet once per step, as there.

// Batch rows per forward tile (4 slots of accumulators each: the LSTM's and the GRU's 4 slots of a group
// of 16 units, the vanilla cell's 1 slot of 4 groups, kSmallGroups), and per backward tile, which also takes
// kSmallBlocks 16-row blocks of [W_i; W_h]: with AVX-512 24 and 16 registers of accumulators (6 forward
// rows ran a batch of 8 in 0.65x the time of 4; 10 backward rows spilled), with AVX2 8 and 8 (a V is two).
constexpr int kSmallRows = kWideRegisters ? 6 : 1;
constexpr int kSmallBackRows = kWideRegisters ? 8 : 4;
constexpr int kSmallBlocks = kWideRegisters ? 2 : 1;
// Accumulator slots per row of a small-layout forward tile: the LSTM's and the GRU's 4 slots of one group.
constexpr int kSmallSlots = 4;
template <class Cell>
constexpr int kSmallGroups = kSmallSlots / Cell::kSlots;  // groups of 16 units per forward tile

// f(g0, std::integral_constant<int, n>{}) for groups [lo, hi) in tiles of n = N, the rest (fewer than N) one
// group a tile.
template <int N, typename F>
void for_group_tiles(int lo, int hi, F&& f) {
  int g0 = lo;
  if constexpr (N > 1)
    for (; g0 + N <= hi; g0 += N) f(g0, std::integral_constant<int, N>{});
  for (; g0 < hi; ++g0) f(g0, std::integral_constant<int, 1>{});
}

// f(b0, std::integral_constant<int, r>{}) for each tile of r <= R rows of B, r as a compile-time count.
template <int R, typename F>
void for_row_tiles(int B, F&& f) {
  for (int b0 = 0; b0 < B; b0 += R) with_rows<R>(std::min(R, B - b0), [&](auto rows) { f(b0, rows); });
}


template <class Cell>
struct ForwardSmall {
  static constexpr int G = Cell::kGates, S = Cell::kSlots, kKept = Cell::kKept;
  static constexpr int kGroups = kSmallGroups<Cell>;  // groups per tile
  int T, B, I, H, K;  // K = I + H
  Rows in, out;       // of x; of ys and operands
  const float *x, *w_i, *w_h;
  const float* bias[kMaxSlots];
  float* wp;        // (H / 16 groups, K, G, 16): group g's units of each gate, per operand element
  float *ys, *res;  // res: (T, B, kKept, H), per row what Forward keeps
  float* operands;  // as Forward's
  float* cT;        // LSTM: (B, H)
  float* h[2];      // (B, H) twice: h_{t-1} and h_t, double-buffered
  float* xw;        // (min(xs(), T) B rows, groups, S slots, 16): the slots' bias + x_t W_i, see x_part
  const float* zeros;  // I zeros: a padded step's x_t (see Masks)
  const Masks* m;
  const float *h_init, *c_init;  // (B, H): the carry a reset starts over from; null without resets

  static int groups(int H) { return (H + 15) / 16; }
  int xs() const { return x_steps(B, I, H, G); }  // steps per x_part

  // Groups [glo, ghi); each share packs those it reads, a weight row at a time across all of them, so
  // that each cache line of a row is read once.
  void pack(int glo, int ghi) const {
    for (int k = 0; k < K; ++k) {
      const float* row = weight_row(w_i, w_h, I, G * H, k);
      for (int gi = glo; gi < ghi; ++gi) {
        const int u0 = 16 * gi, n = std::min(16, H - u0);
        float* to = wp + (int64_t{gi} * K + k) * G * 16;
        for (int g = 0; g < G; ++g) store(to + 16 * g, load_first(row + g * H + u0, n));
      }
    }
  }

  // acc[slot[g] NG + j][r] += rows[r][k] w[k, g] of group j (`stride` floats after group 0's) for k in [0, n).
  template <int NG, int NB>
  static void accumulate(V (&acc)[S * NG][NB], const float* w, int64_t stride, const float* const (&rows)[NB],
                         int n, const int (&slot)[G]) {
    for (int k = 0; k < n; ++k) {  // unrolled whole inside, or the accumulators live on the stack
      V wk[NG][G];
#pragma GCC unroll 4
      for (int j = 0; j < NG; ++j)
#pragma GCC unroll 4
        for (int g = 0; g < G; ++g) wk[j][g] = load(w + j * stride + (int64_t{k} * G + g) * 16);
#pragma GCC unroll 8
      for (int r = 0; r < NB; ++r) {
        const V xr = splat(rows[r][k]);
#pragma GCC unroll 4
        for (int j = 0; j < NG; ++j)
#pragma GCC unroll 4
          for (int g = 0; g < G; ++g) acc[slot[g] * NG + j][r] = fma(xr, wk[j][g], acc[slot[g] * NG + j][r]);
      }
    }
  }

  // Where x_part leaves slot q of group gi for the chunk's row i.
  float* xw_at(int64_t i, int gi, int q) const { return xw + ((i * groups(H) + gi) * S + q) * 16; }

  // The first part of every slot's FMA chain, its bias then x_t's elements, for groups [g0, g0 + NG) and
  // the chunk's rows [i0, i0 + NB) (row i: step t0 + i / B, batch row i % B); tile() goes on from there.
  template <int NG, int NB>
  void x_tile(int t0, int g0, int i0) const {
    V acc[S * NG][NB];
    for (int j = 0; j < NG; ++j) {
      const int u0 = 16 * (g0 + j), n = std::min(16, H - u0);
      for (int q = 0; q < S; ++q) {
        const V b = load_first(bias[q] + u0, n);
        for (int r = 0; r < NB; ++r) acc[q * NG + j][r] = b;
      }
    }
    const float* rows[NB];
    for (int r = 0; r < NB; ++r) {
      const int t = t0 + (i0 + r) / B, b = (i0 + r) % B;
      rows[r] = m->live_row(t, b) ? x + (in.at(t) + b * in.b) * I : zeros;
    }
    accumulate<NG, NB>(acc, wp + int64_t{g0} * K * G * 16, int64_t{K} * G * 16, rows, I, Cell::kXSlot);
    for (int r = 0; r < NB; ++r)
      for (int j = 0; j < NG; ++j)
        for (int q = 0; q < S; ++q) store(xw_at(i0 + r, g0 + j, q), acc[q * NG + j][r]);
  }

  void x_part(int t0, int glo, int ghi) const {
    const int rows = std::min(xs(), T - t0) * B;
    for_group_tiles<kGroups>(glo, ghi, [&](int g0, auto ng) {
      for_row_tiles<kSmallRows>(rows, [&](int i0, auto nb) {
        x_tile<decltype(ng)::value, decltype(nb)::value>(t0, g0, i0);
      });
    });
  }

  // Groups [g0, g0 + NG)'s units for rows [b0, b0 + NB) at step t: x_part's sums, then h_{t-1}'s elements.
  template <int NG, int NB>
  void tile(int t, int g0, int b0, const float* h_prev, float* h_next) const {
    const int64_t i0 = int64_t{t % xs()} * B + b0;  // the chunk's row
    V acc[S * NG][NB];
    for (int r = 0; r < NB; ++r)
      for (int j = 0; j < NG; ++j)
        for (int q = 0; q < S; ++q) acc[q * NG + j][r] = load(xw_at(i0 + r, g0 + j, q));
    const float* rows[NB];
    for (int r = 0; r < NB; ++r) rows[r] = h_prev + int64_t{b0 + r} * H;
    accumulate<NG, NB>(acc, wp + (int64_t{g0} * K + I) * G * 16, int64_t{K} * G * 16, rows, H, Cell::kHSlot);
    for (int r = 0; r < NB; ++r) {
      const int b = b0 + r;
      const uint16_t live = m->live_row(t, b);  // a padded step keeps the carry
      for (int j = 0; j < NG; ++j) {
        const int u0 = 16 * (g0 + j), n = std::min(16, H - u0);
        const V hp = load_first(h_prev + int64_t{b} * H + u0, n);
        const V c_prev = Cell::kMemory ? load_first(cT + int64_t{b} * H + u0, n) : zero();
        V slots[S];
        for (int q = 0; q < S; ++q) slots[q] = acc[q * NG + j][r];
        V kept[kKept], c;
        const V h = cell_step<Cell>(slots, hp, c_prev, c, kept);
        if constexpr (Cell::kMemory) store_first(cT + int64_t{b} * H + u0, n, select(live, c, c_prev));
        store_first(h_next + int64_t{b} * H + u0, n, select(live, h, hp));
        if (res) {
          float* to = res + (int64_t{t} * B + b) * kKept * H + u0;
          for (int q = 0; q < kKept; ++q) store_first(to + int64_t{q} * H, n, kept[q]);
        }
      }
    }
  }

  // The rows that start over at step t take the initial carry (units [ulo, uhi) of h and of c).
  void restart(int t, int ulo, int uhi, float* hs) const {
    for (int b = 0; b < B; ++b) {
      if (!m->restarts_row(t, b)) continue;
      std::memcpy(hs + int64_t{b} * H + ulo, h_init + int64_t{b} * H + ulo, sizeof(float) * (uhi - ulo));
      if constexpr (Cell::kMemory)
        std::memcpy(cT + int64_t{b} * H + ulo, c_init + int64_t{b} * H + ulo, sizeof(float) * (uhi - ulo));
    }
  }

  // Step t's operands [x_t, h_{t-1}] (training), columns [r0, r1) of x_t and units [ulo, uhi) of h_{t-1}.
  void put_operands(int t, int r0, int r1, int ulo, int uhi, const float* hs) const {
    float* to = operands + out.at(t) * K;
    copy_rows(x + in.at(t) * I, in.b * I, B, m->valid_row(t), r0, r1, to, out.b * K);
    copy_rows(hs, H, B, nullptr, ulo, uhi, to + I, out.b * K);
  }

  // As Forward::phase, with shares of 16-unit groups (in tiles of kGroups); each share computes its
  // groups' x_part a chunk of steps ahead.
  void phase(int64_t p, int j, int n) const {
    const Range mine = share(groups(H), j, n), cols = share(I, j, n);
    const int ulo = std::min(H, 16 * mine.lo), uhi = std::min(H, 16 * mine.hi);
    if (p == 0) {
      pack(mine.lo, mine.hi);
      if (m->resets()) restart(0, ulo, uhi, h[0]);
      if (operands) put_operands(0, cols.lo, cols.hi, ulo, uhi, h[0]);
      return;
    }
    const int t = static_cast<int>(p - 1);
    const float* h_prev = h[t & 1];
    float* h_next = h[(t + 1) & 1];
    if (t % xs() == 0) x_part(t, mine.lo, mine.hi);
    for_group_tiles<kGroups>(mine.lo, mine.hi, [&](int g0, auto ng) {
      for_row_tiles<kSmallRows>(B, [&](int b0, auto nb) {
        tile<decltype(ng)::value, decltype(nb)::value>(t, g0, b0, h_prev, h_next);
      });
    });
    copy_rows(h_next, H, B, m->valid_row(t), ulo, uhi, ys + out.at(t) * H, out.b * H);
    if (t + 1 < T) {
      if (m->resets()) restart(t + 1, ulo, uhi, h_next);
      if (operands) put_operands(t + 1, cols.lo, cols.hi, ulo, uhi, h_next);
    }
  }
};

template <class Cell>
struct BackwardSmall {
  static constexpr int G = Cell::kGates, S = Cell::kSlots, kKept = Cell::kKept;
  int T, B, I, H;
  Rows in, out;  // of dys; of dx and the operands
  const float *res, *dys;
  const float *w_i, *w_h;
  float* wp;        // [W_i; W_h] as (G H, 16) blocks of 16 rows (pack_rows): W_i's, then W_h's (block())
  const WeightGradient<Cell>* dw;  // and its ring of dG rows, as Backward's
  float* dx;
  float *dh, *dc;   // (B, H), as Backward's
  float* g[2];      // (B, S H) twice: dG_t's rows, double-buffered
  float* db;        // (16, S H): lane l sums dG of the rows b with b % 16 = l, as Backward's lanes
  const Masks* m;
  float *dh_init, *dc_init;  // (B, H), as Backward's

  int x_blocks() const { return (I + 15) / 16; }
  float* block(int i) const { return wp + int64_t{i} * 16 * G * H; }  // i: W_i's [0, x_blocks()), then W_h's

  // Rows [r0, r1) of [W_i; W_h], from a block's first row, into blocks i0, i0 + 1, ...
  void pack(int r0, int r1, int i0) const {
    for (int r = r0, i = i0; r < r1; r += 16, ++i) {
      const int R = std::min(16, r1 - r);
      const float* row[16];
      for (int j = 0; j < R; ++j) row[j] = weight_row(w_i, w_h, I, G * H, r + j);
      pack_rows(row, R, G * H, block(i), 16);
    }
  }

  // As Backward::gates, a row at a time (no transposes: d ys and dG rows are the vectors' layout).
  void gates(int t, int ulo, int uhi, float* gt) const {
    if (m->lengths()) gates<true>(t, ulo, uhi, gt);
    else gates<false>(t, ulo, uhi, gt);
  }
  template <bool lengths>
  void gates(int t, int ulo, int uhi, float* gt) const {
    for (int b = 0; b < B; ++b) {
      const uint16_t live = m->live_row(t, b);
      const float* kept_b = res + (int64_t{t} * B + b) * kKept * H;
      const float* dy = dys + (in.at(t) + b * in.b) * H;
      float* to = dw->ring.row(t, b);
      float* sums = db + int64_t{b % 16} * S * H;
      float* gb = gt + int64_t{b} * S * H;
      for (int u0 = ulo; u0 < uhi; u0 += 16) {
        const int n = std::min(16, uhi - u0);
        const int64_t at = int64_t{b} * H + u0;
        V kept[kKept];
        for (int q = 0; q < kKept; ++q) kept[q] = load_first(kept_b + int64_t{q} * H + u0, n);
        V d[S], d_h = load_first(dh + at, n), d_c = Cell::kMemory ? load_first(dc + at, n) : zero();
        cell_grads<Cell, lengths>(kept, load_first(dy + u0, n), live, d_h, d_c, d);
        if constexpr (!Cell::kBypass && lengths) store_first(dh + at, n, d_h);
        if constexpr (Cell::kMemory || Cell::kBypass) store_first(dc + at, n, d_c);
        for (int q = 0; q < S; ++q) {
          const int64_t k = int64_t{q} * H + u0;
          store_first(sums + k, n, load_first(sums + k, n) + d[q]);
          store_first(gb + k, n, d[q]);
          store_first(to + k, n, d[q]);
        }
      }
    }
  }

  // acc[q][r] += [W_i; W_h] rows of block i + q times the dG row rows[r]: gate block k of a W_i row
  // multiplies dG's slot kXSlot[k], of a W_h row kHSlot[k] (`slot`), in Backward::tile's order.
  template <int NR, int NB>
  void tile(int i, const float* const (&rows)[NB], const int (&slot)[G], V (&acc)[NR][NB]) const {
    const int64_t block_floats = int64_t{16} * G * H;
    for (int gate = 0; gate < G; ++gate) {
      const float* w = block(i) + int64_t{gate} * H * 16;
      const int64_t col = int64_t{slot[gate]} * H;
      for (int k = 0; k < H; ++k) {
        V wk[NR];
        for (int q = 0; q < NR; ++q) wk[q] = load(w + q * block_floats + int64_t{k} * 16);
#pragma GCC unroll 8
        for (int r = 0; r < NB; ++r) {
          const V d = splat(rows[r][col + k]);
          for (int q = 0; q < NR; ++q) acc[q][r] = fma(wk[q], d, acc[q][r]);
        }
      }
    }
  }

  // f(i, std::integral_constant<int, NR>{}) for blocks [lo, hi), kSmallBlocks at a time.
  template <typename F>
  static void for_blocks(int lo, int hi, F&& f) {
    for (int i = lo; i < hi; i += kSmallBlocks)
      with_rows<kSmallBlocks>(std::min(kSmallBlocks, hi - i), [&](auto nr) { f(i, nr); });
  }

  // Blocks [lo, hi) of d h_{t-1}'s rows (units), from dG_t (`gt`): as Backward::rows, starting from what
  // gates() left.
  void h_rows(int lo, int hi, const float* gt) const {
    const float* from = Cell::kBypass ? dc : m->lengths() ? dh : nullptr;
    for_blocks(lo, hi, [&](int i, auto blocks) {
      constexpr int NR = decltype(blocks)::value;
      for_row_tiles<kSmallBackRows>(B, [&](int b0, auto nb) {
        constexpr int NB = decltype(nb)::value;
        V acc[NR][NB];
        const float* rows[NB];
        for (int r = 0; r < NB; ++r) rows[r] = gt + int64_t{b0 + r} * S * H;
        for (int q = 0; q < NR; ++q) {
          const int u0 = 16 * (i + q), n = std::min(16, H - u0);
          for (int r = 0; r < NB; ++r) acc[q][r] = from ? load_first(from + int64_t{b0 + r} * H + u0, n) : zero();
        }
        tile<NR, NB>(x_blocks() + i, rows, Cell::kHSlot, acc);
        for (int q = 0; q < NR; ++q) {
          const int u0 = 16 * (i + q), n = std::min(16, H - u0);
          for (int r = 0; r < NB; ++r) store_first(dh + int64_t{b0 + r} * H + u0, n, acc[q][r]);
        }
      });
    });
  }

  // Blocks [lo, hi) of d x_s's rows for the steps s in [t0, t1), from their dG rows in the ring: a chunk of
  // steps at a time (x_steps), which reads W_i once per chunk. Zero at padded steps, as Backward's.
  void x_rows(int t0, int t1, int lo, int hi) const {
    const int n_rows = (t1 - t0) * B;  // row i: step t0 + i / B, batch row i % B
    for_blocks(lo, hi, [&](int i, auto blocks) {
      constexpr int NR = decltype(blocks)::value;
      for_row_tiles<kSmallBackRows>(n_rows, [&](int i0, auto nb) {
        constexpr int NB = decltype(nb)::value;
        V acc[NR][NB];
        const float* rows[NB];
        float* to[NB];
        uint16_t live[NB];
        for (int r = 0; r < NB; ++r) {
          const int t = t0 + (i0 + r) / B, b = (i0 + r) % B;
          rows[r] = dw->ring.row(t, b);
          to[r] = dx + (out.at(t) + b * out.b) * I;
          live[r] = m->live_row(t, b);
          for (int q = 0; q < NR; ++q) acc[q][r] = zero();
        }
        tile<NR, NB>(i, rows, Cell::kXSlot, acc);
        for (int q = 0; q < NR; ++q) {
          const int r0 = 16 * (i + q), n = std::min(16, I - r0);
          for (int r = 0; r < NB; ++r) store_first(to[r] + r0, n, keep(live[r], acc[q][r]));
        }
      });
    });
  }

  // As Backward::cut.
  void cut(int t, int ulo, int uhi) const {
    for (int b = 0; b < B; ++b) {
      if (!m->restarts_row(t, b)) continue;
      for (int u0 = ulo; u0 < uhi; u0 += 16) {
        const int n = std::min(16, uhi - u0);
        const int64_t at = int64_t{b} * H + u0;
        for (auto [d, init] : {std::pair{dh, dh_init}, std::pair{dc, dc_init}}) {
          if (!init) continue;  // only the LSTM has a c
          store_first(init + at, n, load_first(init + at, n) + load_first(d + at, n));
          store_first(d + at, n, zero());
        }
      }
    }
  }

  // As Backward::phase, with shares of 16-unit blocks of W_h's rows and of W_i's.
  void phase(int64_t p, int j, int n) const {
    const Range mine = share((H + 15) / 16, j, n), xs = share(x_blocks(), j, n);
    const int ulo = std::min(H, 16 * mine.lo), uhi = std::min(H, 16 * mine.hi);
    const int t = T - static_cast<int>(p);
    if (p == 0) {
      pack(16 * xs.lo, std::min(I, 16 * xs.hi), xs.lo);
      pack(I + ulo, I + uhi, x_blocks() + mine.lo);
    } else {
      h_rows(mine.lo, mine.hi, g[t & 1]);
      if (m->resets()) cut(t, ulo, uhi);
      // d x_s for a chunk of steps once all their dG are out (every share's, from earlier phases).
      const int chunk = x_steps(B, I, H, G);
      if (t % chunk == 0) x_rows(t, std::min(T, t + chunk), xs.lo, xs.hi);
    }
    if (t > 0) gates(t - 1, ulo, uhi, g[(t - 1) & 1]);
    if (p > 0) dw->phase(t, j, n);
  }
};

// ------------------------------------------------------------ handlers ----

int threads_for(int64_t requested, int H) {
  const int n = static_cast<int>(std::max<int64_t>(1, requested));
  return std::min(n, std::max(1, H / 16));
}

// A call's steps: T of them from step `first` of the (T_all, B, .) or
// (B, T_all, .) input arrays (`dims`), into output arrays of T steps.
struct Shape {
  int T, B;
  Rows in, out;
};
Shape sequence(ffi::Span<const int64_t> dims, bool batch_major, int64_t first, int64_t T) {
  const int64_t T_all = dims[batch_major ? 1 : 0], B = dims[batch_major ? 0 : 1];
  return {static_cast<int>(T), static_cast<int>(B), batch_major ? Rows{1, T_all, first} : Rows{B, 1, first},
          batch_major ? Rows{1, T} : Rows{B, 1}};
}

// (B, H) row-major -> (H, Bp) feature-major, and back.
std::vector<float> feature_major(const float* src, int B, int H, int Bp) {
  std::vector<float> out(int64_t{H} * Bp, 0.f);
  transpose_in(src, B, H, out.data(), Bp, 0, H);
  return out;
}
void batch_major_out(const float* src, int B, int H, int Bp, float* dst) { transpose_out(src, Bp, 0, H, B, dst, H); }

// Ask for transparent huge pages under a large output buffer the call is about to write (the kept
// activations, the matmul operands). XLA allocates its temp buffer afresh on every call, and glibc
// maps blocks over 32 MiB (a training step's temp buffer often is one) fresh from the kernel each time:
// 4 KiB pages cost a fault each as they are first written, about 12,000 a call for an LSTM at B = 32,
// T = 100, H = 256. Huge pages come a 2 MiB extent per fault. Only whole pages inside the buffer are
// advised (the advice changes no contents, and does nothing where THP is "never").
// JAXRNN_NATIVE_HUGEPAGES=0 turns it off.
void advise_huge_pages(const void* p, int64_t bytes) {
  static const bool on = [] {
    const char* v = std::getenv("JAXRNN_NATIVE_HUGEPAGES");
    return !(v && v[0] == '0');
  }();
  constexpr uintptr_t kHuge = uintptr_t{2} << 20, kPage = 4096;
  if (!on || bytes < int64_t{2 * kHuge}) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kPage - 1) & ~(kPage - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kPage - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
}

// A call's scratch (its packed weights, (I+H) x G*H floats; the backward's ring of dG rows; the small
// layout's x_t W_i sums), leased from
// buffers kept across calls. Allocated afresh they would be fresh pages on every call once they pass
// glibc's largest heap block (32 MiB: the weights of an LSTM at H = 1024), zeroed and faulted in 4 KiB at a
// time, about 8,200 faults a forward call, and a vector would zero them besides. A lease takes the
// smallest free buffer that fits; when none fits it frees the largest (too small) one and allocates, so
// the pool holds at most as many buffers as leases were ever held at once, none over kKept floats (a
// larger one, a ring of dG rows for thousands of batch rows, say, goes back to the system: its fresh
// pages cost little beside the work of such a call). The contents are stale: every caller writes what it
// reads first.
class Scratch {
  static constexpr int64_t kKept = int64_t{16} << 20;  // 64 MiB of floats
 public:
  explicit Scratch(int64_t n) {
    Buffer too_small;  // freed outside the lock
    {
      std::lock_guard<std::mutex> lock(pool().mutex);
      auto& free = pool().free;
      auto fits = std::find_if(free.begin(), free.end(), [n](const Buffer& b) { return b.size >= n; });
      if (fits != free.end()) {
        buffer_ = std::move(*fits);
        free.erase(fits);
      } else if (!free.empty()) {
        too_small = std::move(free.back());  // sorted by size: the largest
        free.pop_back();
      }
    }
    if (!buffer_.data) buffer_ = Buffer{std::unique_ptr<float[]>(new float[n]), n};
  }
  ~Scratch() {
    if (buffer_.size > kKept) return;
    std::lock_guard<std::mutex> lock(pool().mutex);
    auto& free = pool().free;
    auto at = std::lower_bound(free.begin(), free.end(), buffer_.size,
                               [](const Buffer& b, int64_t size) { return b.size < size; });
    free.insert(at, std::move(buffer_));  // kept sorted by size: the first that fits is the smallest
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* get() { return buffer_.data.get(); }

 private:
  struct Buffer {
    std::unique_ptr<float[]> data;
    int64_t size = 0;
  };
  struct Pool {
    std::mutex mutex;
    std::vector<Buffer> free;
  };
  // Never destroyed: a call still running on one of XLA's threads at exit must not meet a destroyed pool.
  static Pool& pool() {
    static Pool* pool = new Pool;
    return *pool;
  }
  Buffer buffer_;
};

// The forward loop of either cell. c0, c_init and c_last: LSTM only (null for the GRU); h_init and c_init:
// the carry a reset starts over from, read only with resets.
template <class Cell>
void forward(ffi::ThreadPool& pool, const float* x, Shape seq, int I, int H, const float* h0, const float* c0,
             const float* h_init, const float* c_init, const Masks& masks, const float* w_i, const float* w_h,
             const float* (&bias)[kMaxSlots], float* ys, float* h_last, float* c_last, float* res, float* operands,
             int64_t threads, bool pooled) {
  const int Bp = round16(seq.B), K = I + H;
  if (res) advise_huge_pages(res, int64_t{seq.T} * Cell::kKept * H * Bp * 4);
  if (operands) advise_huge_pages(operands, int64_t{seq.T} * seq.B * K * 4);
  Scratch wp(int64_t{K} * Cell::kGates * H);
  std::vector<float> a0(int64_t{K} * Bp, 0.f), a1(int64_t{K} * Bp, 0.f);
  transpose_in(h0, seq.B, H, a0.data() + int64_t{I} * Bp, Bp, 0, H);
  std::vector<float> c = c0 ? feature_major(c0, seq.B, H, Bp) : std::vector<float>();
  std::vector<float> hi, ci;
  if (masks.resets()) {
    hi = feature_major(h_init, seq.B, H, Bp);
    if (c_init) ci = feature_major(c_init, seq.B, H, Bp);
  }
  Forward<Cell> f{seq.T, seq.B, I, H, Bp, K, seq.in, seq.out, x, w_i, w_h, {bias[0], bias[1], bias[2], bias[3]},
                  wp.get(), ys, res, operands, c.data(), {a0.data(), a1.data()}, &masks,
                  hi.empty() ? nullptr : hi.data(), ci.empty() ? nullptr : ci.data()};
  const int n = threads_for(threads, H);
  run_phases(pool, pooled, int64_t{seq.T} + 1, n, [&f, n](int64_t p, int j) { f.phase(p, j, n); });
  batch_major_out((seq.T % 2 ? a1 : a0).data() + int64_t{I} * Bp, seq.B, H, Bp, h_last);
  if (c_last) batch_major_out(c.data(), seq.B, H, Bp, c_last);
}

// The bias gradient from its per-lane sums: out[k] = the sum of element k's 16 lanes, lane 0 first, each
// at lanes[k * k_stride + l * lane_stride]. Both layouts sum here, so that they sum in one order.
void sum_lanes(const float* lanes, int n, int64_t k_stride, int64_t lane_stride, float* out) {
  for (int k = 0; k < n; ++k) {
    float sum = 0.f;
    for (int l = 0; l < 16; ++l) sum += lanes[k * k_stride + l * lane_stride];
    out[k] = sum;
  }
}

// The backward loop of either cell, with the weight gradients from the forward call's `operands`.
// dc_last, dc0 and dc_init: LSTM only; dh_init and dc_init (the initial carry's gradient from the steps that
// reset to it): written only with resets.
template <class Cell>
void backward(ffi::ThreadPool& pool, const float* res, const float* operands, Shape seq, int I, int H,
              const float* w_i, const float* w_h, const float* dys, const float* dh_last, const float* dc_last,
              const Masks& masks, float* dx, float* dh0, float* dc0, float* dh_init, float* dc_init, float* dw_i,
              float* dw_h, float* db, int64_t threads, bool pooled) {
  const int Bp = round16(seq.B), S = Cell::kSlots;
  Scratch wp(int64_t{I + H} * Cell::kGates * H);
  Scratch ring(DgRing::floats(seq.T, seq.B, int64_t{S} * H));
  const WeightGradient<Cell> dw(seq.T, seq.B, seq.out, I, H, operands, ring.get(), dw_i, dw_h);
  std::vector<float> dh = feature_major(dh_last, seq.B, H, Bp);
  std::vector<float> dc = dc_last ? feature_major(dc_last, seq.B, H, Bp) : std::vector<float>(int64_t{H} * Bp, 0.f);
  std::vector<float> dhi, dci;
  if (masks.resets()) {
    dhi.assign(int64_t{H} * Bp, 0.f);
    if (dc_init) dci.assign(int64_t{H} * Bp, 0.f);
  }
  std::vector<float> dxt(int64_t{I} * Bp, 0.f), g0(int64_t{S} * H * Bp, 0.f), g1(int64_t{S} * H * Bp, 0.f),
      lanes(int64_t{S} * H * 16, 0.f);
  Backward<Cell> bw{seq.T, seq.B, I, H, Bp, seq.in, seq.out, res, dys, w_i, w_h, wp.get(), &dw, dx,
                    dh.data(), dc.data(), dxt.data(), {g0.data(), g1.data()}, lanes.data(), &masks,
                    dhi.empty() ? nullptr : dhi.data(), dci.empty() ? nullptr : dci.data()};
  const int n = threads_for(threads, H);
  run_phases(pool, pooled, int64_t{seq.T} + 1, n, [&bw, n](int64_t p, int j) { bw.phase(p, j, n); });
  batch_major_out(dh.data(), seq.B, H, Bp, dh0);
  if (dc0) batch_major_out(dc.data(), seq.B, H, Bp, dc0);
  if (!dhi.empty()) batch_major_out(dhi.data(), seq.B, H, Bp, dh_init);
  if (!dci.empty()) batch_major_out(dci.data(), seq.B, H, Bp, dc_init);
  sum_lanes(lanes.data(), S * H, 16, 1, db);  // padded batch rows were never added (see gates): all lanes count
}

// forward() and backward() in the small layout (ForwardSmall), with the same arguments; the kept
// activations are (T, B, Cell::kKept, H).
template <class Cell>
void forward_small(ffi::ThreadPool& pool, const float* x, Shape seq, int I, int H, const float* h0,
                   const float* c0, const float* h_init, const float* c_init, const Masks& masks, const float* w_i,
                   const float* w_h, const float* (&bias)[kMaxSlots], float* ys, float* h_last, float* c_last,
                   float* res, float* operands, int64_t threads, bool pooled) {
  const int B = seq.B, K = I + H, groups = ForwardSmall<Cell>::groups(H);
  if (res) advise_huge_pages(res, int64_t{seq.T} * Cell::kKept * H * B * 4);
  if (operands) advise_huge_pages(operands, int64_t{seq.T} * B * K * 4);
  Scratch wp(int64_t{groups} * 16 * K * Cell::kGates);
  std::vector<float> h0s(h0, h0 + int64_t{B} * H), h1s(int64_t{B} * H, 0.f), zeros(I, 0.f);
  // Rows for a chunk of steps, or all T when fewer; from the pool of scratch (x_part writes every row it
  // reads), where a fresh vector would be zeroed, and past glibc's thresholds faulted in, on every call
  // (4 MiB for large weights' chunk at B = 1, H = 1024).
  Scratch xw(int64_t{std::min(x_steps(B, I, H, Cell::kGates), seq.T)} * B * groups * Cell::kSlots * 16);
  std::vector<float> c = c0 ? std::vector<float>(c0, c0 + int64_t{B} * H) : std::vector<float>();
  ForwardSmall<Cell> f{seq.T, B, I, H, K, seq.in, seq.out, x, w_i, w_h, {bias[0], bias[1], bias[2], bias[3]},
                       wp.get(), ys, res, operands, c.data(), {h0s.data(), h1s.data()}, xw.get(), zeros.data(),
                       &masks, masks.resets() ? h_init : nullptr, masks.resets() ? c_init : nullptr};
  const int n = threads_for(threads, H);
  run_phases(pool, pooled, int64_t{seq.T} + 1, n, [&f, n](int64_t p, int j) { f.phase(p, j, n); });
  std::memcpy(h_last, (seq.T % 2 ? h1s : h0s).data(), sizeof(float) * B * H);
  if (c_last) std::memcpy(c_last, c.data(), sizeof(float) * B * H);
}

template <class Cell>
void backward_small(ffi::ThreadPool& pool, const float* res, const float* operands, Shape seq, int I, int H,
                    const float* w_i, const float* w_h, const float* dys, const float* dh_last,
                    const float* dc_last, const Masks& masks, float* dx, float* dh0, float* dc0, float* dh_init,
                    float* dc_init, float* dw_i, float* dw_h, float* db, int64_t threads, bool pooled) {
  const int B = seq.B, S = Cell::kSlots;
  const int64_t BH = int64_t{B} * H;
  Scratch wp(int64_t{(I + 15) / 16 + (H + 15) / 16} * 16 * Cell::kGates * H);
  Scratch ring(DgRing::floats(seq.T, B, int64_t{S} * H));
  const WeightGradient<Cell> dw(seq.T, seq.B, seq.out, I, H, operands, ring.get(), dw_i, dw_h);
  std::vector<float> dh(dh_last, dh_last + BH);
  std::vector<float> dc = dc_last ? std::vector<float>(dc_last, dc_last + BH) : std::vector<float>(BH, 0.f);
  std::vector<float> dhi, dci;
  if (masks.resets()) {
    dhi.assign(BH, 0.f);
    if (dc_init) dci.assign(BH, 0.f);
  }
  std::vector<float> g0(S * BH, 0.f), g1(S * BH, 0.f), lanes(int64_t{16} * S * H, 0.f);
  BackwardSmall<Cell> bw{seq.T, B, I, H, seq.in, seq.out, res, dys, w_i, w_h, wp.get(), &dw, dx,
                         dh.data(), dc.data(), {g0.data(), g1.data()}, lanes.data(), &masks,
                         dhi.empty() ? nullptr : dhi.data(), dci.empty() ? nullptr : dci.data()};
  const int n = threads_for(threads, H);
  run_phases(pool, pooled, int64_t{seq.T} + 1, n, [&bw, n](int64_t p, int j) { bw.phase(p, j, n); });
  std::memcpy(dh0, dh.data(), sizeof(float) * BH);
  if (dc0) std::memcpy(dc0, dc.data(), sizeof(float) * BH);
  if (!dhi.empty()) std::memcpy(dh_init, dhi.data(), sizeof(float) * BH);
  if (!dci.empty()) std::memcpy(dc_init, dci.data(), sizeof(float) * BH);
  sum_lanes(lanes.data(), S * H, 1, S * H, db);
}

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using U8 = ffi::Buffer<ffi::U8>;
using Out = ffi::ResultBuffer<ffi::F32>;

// The steps a call runs: from step *start of the whole input `seq`, as many as `out` has.
Shape steps(const F32& seq, const S32& start, Out& out, bool batch_major) {
  return sequence(seq.dimensions(), batch_major, *start.typed_data(), out->dimensions()[batch_major ? 1 : 0]);
}

// lengths (B,) and resets (T_all, B), each (0,) when not given.
Masks masks_of(const S32& lengths, const U8& resets, const Shape& seq) {
  return masks_for(lengths.element_count() ? lengths.typed_data() : nullptr,
                   resets.element_count() ? resets.typed_data() : nullptr, seq.T, seq.B, seq.in.first);
}

ffi::Error LstmForward(ffi::ThreadPool pool, F32 x, S32 start, F32 h0, F32 c0, F32 h_init, F32 c_init, S32 lengths,
                       U8 resets, F32 w_i, F32 w_h, F32 b, Out ys, Out h_last, Out c_last, Out res, Out operands,
                       int64_t threads, bool pooled, bool keep, bool batch_major, bool small) {
  const int H = h0.dimensions()[1];
  const float* bias[kMaxSlots] = {b.typed_data(), b.typed_data() + H, b.typed_data() + 2 * H, b.typed_data() + 3 * H};
  const Shape seq = steps(x, start, ys, batch_major);
  const auto run = small ? forward_small<Lstm> : forward<Lstm>;
  run(pool, x.typed_data(), seq, x.dimensions()[2], H, h0.typed_data(), c0.typed_data(),
      h_init.typed_data(), c_init.typed_data(), masks_of(lengths, resets, seq), w_i.typed_data(),
      w_h.typed_data(), bias, ys->typed_data(), h_last->typed_data(), c_last->typed_data(),
      keep ? res->typed_data() : nullptr, keep ? operands->typed_data() : nullptr, threads, pooled);
  return ffi::Error::Success();
}

ffi::Error GruForward(ffi::ThreadPool pool, F32 x, S32 start, F32 h0, F32 h_init, S32 lengths, U8 resets, F32 w_i,
                      F32 w_h, F32 b, F32 b_hn, Out ys, Out h_last, Out res, Out operands, int64_t threads,
                      bool pooled, bool keep, bool batch_major, bool small) {
  const int H = h0.dimensions()[1];
  const float* bias[kMaxSlots] = {b.typed_data(), b.typed_data() + H, b.typed_data() + 2 * H, b_hn.typed_data()};
  const Shape seq = steps(x, start, ys, batch_major);
  const auto run = small ? forward_small<Gru> : forward<Gru>;
  run(pool, x.typed_data(), seq, x.dimensions()[2], H, h0.typed_data(), nullptr, h_init.typed_data(),
      nullptr, masks_of(lengths, resets, seq), w_i.typed_data(), w_h.typed_data(), bias, ys->typed_data(),
      h_last->typed_data(), nullptr, keep ? res->typed_data() : nullptr,
      keep ? operands->typed_data() : nullptr, threads, pooled);
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::ThreadPool pool, F32 res, F32 operands, F32 w_i, F32 w_h, F32 dys, S32 start,
                        F32 dh_last, F32 dc_last, S32 lengths, U8 resets, Out dx, Out dh0, Out dc0, Out dh_init,
                        Out dc_init, Out dw_i, Out dw_h, Out db, int64_t threads, bool pooled, bool batch_major,
                        bool small) {
  const Shape seq = steps(dys, start, dx, batch_major);
  const auto run = small ? backward_small<Lstm> : backward<Lstm>;
  run(pool, res.typed_data(), operands.typed_data(), seq, w_i.dimensions()[0], dys.dimensions()[2],
      w_i.typed_data(), w_h.typed_data(), dys.typed_data(), dh_last.typed_data(), dc_last.typed_data(),
      masks_of(lengths, resets, seq), dx->typed_data(), dh0->typed_data(), dc0->typed_data(),
      dh_init->typed_data(), dc_init->typed_data(), dw_i->typed_data(), dw_h->typed_data(), db->typed_data(),
      threads, pooled);
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::ThreadPool pool, F32 res, F32 operands, F32 w_i, F32 w_h, F32 dys, S32 start,
                       F32 dh_last, S32 lengths, U8 resets, Out dx, Out dh0, Out dh_init, Out dw_i, Out dw_h,
                       Out db, int64_t threads, bool pooled, bool batch_major, bool small) {
  const Shape seq = steps(dys, start, dx, batch_major);
  const auto run = small ? backward_small<Gru> : backward<Gru>;
  run(pool, res.typed_data(), operands.typed_data(), seq, w_i.dimensions()[0], dys.dimensions()[2],
      w_i.typed_data(), w_h.typed_data(), dys.typed_data(), dh_last.typed_data(), nullptr,
      masks_of(lengths, resets, seq), dx->typed_data(), dh0->typed_data(), nullptr, dh_init->typed_data(),
      nullptr, dw_i->typed_data(), dw_h->typed_data(), db->typed_data(), threads, pooled);
  return ffi::Error::Success();
}

// f(Vanilla<A>{}) for the activation A that the attribute names (Activation).
template <typename F>
ffi::Error with_activation(int64_t activation, F&& f) {
  switch (static_cast<Activation>(activation)) {
    case Activation::kTanh: f(Vanilla<Activation::kTanh>{}); break;
    case Activation::kRelu: f(Vanilla<Activation::kRelu>{}); break;
    case Activation::kIdentity: f(Vanilla<Activation::kIdentity>{}); break;
    default: return ffi::Error::InvalidArgument("activation: expected 0 (tanh), 1 (relu) or 2 (identity)");
  }
  return ffi::Error::Success();
}

ffi::Error VanillaForward(ffi::ThreadPool pool, F32 x, S32 start, F32 h0, F32 h_init, S32 lengths, U8 resets,
                          F32 w_i, F32 w_h, F32 b, Out ys, Out h_last, Out res, Out operands, int64_t threads,
                          bool pooled, bool keep, bool batch_major, bool small, int64_t activation) {
  const int H = h0.dimensions()[1];
  const float* bias[kMaxSlots] = {b.typed_data(), nullptr, nullptr, nullptr};
  const Shape seq = steps(x, start, ys, batch_major);
  return with_activation(activation, [&](auto cell) {
    using Cell = decltype(cell);
    const auto run = small ? forward_small<Cell> : forward<Cell>;
    run(pool, x.typed_data(), seq, x.dimensions()[2], H, h0.typed_data(), nullptr, h_init.typed_data(),
        nullptr, masks_of(lengths, resets, seq), w_i.typed_data(), w_h.typed_data(), bias, ys->typed_data(),
        h_last->typed_data(), nullptr, keep ? res->typed_data() : nullptr,
        keep ? operands->typed_data() : nullptr, threads, pooled);
  });
}

ffi::Error VanillaBackward(ffi::ThreadPool pool, F32 res, F32 operands, F32 w_i, F32 w_h, F32 dys, S32 start,
                           F32 dh_last, S32 lengths, U8 resets, Out dx, Out dh0, Out dh_init, Out dw_i, Out dw_h,
                           Out db, int64_t threads, bool pooled, bool batch_major, bool small,
                           int64_t activation) {
  const Shape seq = steps(dys, start, dx, batch_major);
  return with_activation(activation, [&](auto cell) {
    using Cell = decltype(cell);
    const auto run = small ? backward_small<Cell> : backward<Cell>;
    run(pool, res.typed_data(), operands.typed_data(), seq, w_i.dimensions()[0], dys.dimensions()[2],
        w_i.typed_data(), w_h.typed_data(), dys.typed_data(), dh_last.typed_data(), nullptr,
        masks_of(lengths, resets, seq), dx->typed_data(), dh0->typed_data(), nullptr, dh_init->typed_data(),
        nullptr, dw_i->typed_data(), dw_h->typed_data(), db->typed_data(), threads, pooled);
  });
}

}  // namespace

// Whether the kernels run here: built for AVX-512, or AVX2 with FMA. Built for
// anything else (SSE, NEON, ...) they compile from the same source, untested
// and without FMA instructions where the target has none, and say they do not.
extern "C" int jaxrnn_native_available() { return JAXRNN_SUPPORTED; }

// kLargeWeightBytes, for the layout's choice in Python (jaxrnn/native/__init__.py, layout_for).
extern "C" int64_t jaxrnn_large_weight_bytes() { return kLargeWeightBytes; }

// The vector instruction set the kernels were built for: "avx512", "avx2", "avx", "sse2", "neon" or "generic".
extern "C" const char* jaxrnn_native_isa() { return JAXRNN_ISA; }

// A cell's blocks of H floats per batch row and step: its slots (dG's, below) times 16, plus what it keeps for
// the backward pass (kKept); kind 0, 1, 2: LSTM, GRU, vanilla; -1 for another. Python sizes the calls' buffers
// by these (jaxrnn/native/__init__.py, blocks), so that the two cannot disagree.
extern "C" int jaxrnn_cell_blocks(int kind) {
  constexpr auto blocks = [](auto cell) {
    static_assert(decltype(cell)::kKept < 16, "kept blocks are the low 4 bits");
    return decltype(cell)::kSlots * 16 + decltype(cell)::kKept;
  };
  switch (kind) {
    case 0: return blocks(Lstm{});
    case 1: return blocks(Gru{});
    case 2: return blocks(Vanilla<Activation::kTanh>{});
    default: return -1;
  }
}

// Sequence arrays (x, ys, dys, dx, operands) are (T, B, .), or (B, T, .) with batch_major; x and dys
// may hold more steps than the call runs, which starts at their step `start`.
// kept: (T, kKept H, Bp), or (T, B, kKept, H) with `small` (the small-batch layout, which the backward call of a
// forward call's kept activations must be given too), kKept the cell's (5: LSTM, GRU; 1: vanilla); operands:
// (.., I + H); both (0,) without keep (inference). The weight gradients are w_i's and w_h's shapes; the sum
// of dG (the bias gradient) S H floats, S the cell's slots (4: LSTM, GRU; 1: vanilla).
// Masks (see Masks): lengths (B,) int32 and resets (T_all, B) uint8, time-major in either layout, each
// (0,) when not given; the initial carry (h_init, c_init) and its gradient: (B, H) with resets, else (0,).
using In = ffi::Buffer<ffi::F32>;
using Int = ffi::Buffer<ffi::S32>;
using Flags = ffi::Buffer<ffi::U8>;
using Ret = ffi::Buffer<ffi::F32>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<Int>()            // x, start
                                  .Arg<In>().Arg<In>()             // h0, c0
                                  .Arg<In>().Arg<In>()             // h_init, c_init
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Arg<In>().Arg<In>().Arg<In>()   // w_i (I, 4H), w_h (H, 4H), b (4H,)
                                  .Ret<Ret>().Ret<Ret>().Ret<Ret>()  // ys, h_T, c_T
                                  .Ret<Ret>().Ret<Ret>()             // kept, operands
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("keep")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_forward, GruForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<Int>()            // x, start
                                  .Arg<In>().Arg<In>()             // h0, h_init
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Arg<In>().Arg<In>()             // w_i (I, 3H), w_h (H, 3H)
                                  .Arg<In>().Arg<In>()             // b (3H,), b_hn (H,)
                                  .Ret<Ret>().Ret<Ret>()           // ys, h_T
                                  .Ret<Ret>().Ret<Ret>()           // kept, operands
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("keep")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>()             // kept, operands
                                  .Arg<In>().Arg<In>()             // w_i, w_h
                                  .Arg<In>().Arg<Int>()            // d ys, start
                                  .Arg<In>().Arg<In>()             // d h_T, d c_T
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Ret<Ret>()                      // d x (.., I)
                                  .Ret<Ret>().Ret<Ret>()           // d h0, d c0
                                  .Ret<Ret>().Ret<Ret>()           // d h_init, d c_init
                                  .Ret<Ret>().Ret<Ret>()           // d w_i (I, 4H), d w_h (H, 4H)
                                  .Ret<Ret>()                      // d b: the sum of dG (4H,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_backward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>()             // kept, operands
                                  .Arg<In>().Arg<In>()             // w_i, w_h
                                  .Arg<In>().Arg<Int>().Arg<In>()  // d ys, start, d h_T
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Ret<Ret>()                      // d x (.., I)
                                  .Ret<Ret>().Ret<Ret>()           // d h0, d h_init
                                  .Ret<Ret>().Ret<Ret>()           // d w_i (I, 3H), d w_h (H, 3H)
                                  .Ret<Ret>()                      // the sum of dG (4H,): d b, d b_hn
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_vanilla_forward, VanillaForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<Int>()            // x, start
                                  .Arg<In>().Arg<In>()             // h0, h_init
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Arg<In>().Arg<In>().Arg<In>()   // w_i (I, H), w_h (H, H), b (H,)
                                  .Ret<Ret>().Ret<Ret>()           // ys, h_T
                                  .Ret<Ret>().Ret<Ret>()           // kept, operands
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("keep")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small")
                                  .Attr<int64_t>("activation"));   // Activation: tanh 0, relu 1, identity 2

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_vanilla_backward, VanillaBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>()             // kept, operands
                                  .Arg<In>().Arg<In>()             // w_i, w_h
                                  .Arg<In>().Arg<Int>().Arg<In>()  // d ys, start, d h_T
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Ret<Ret>()                      // d x (.., I)
                                  .Ret<Ret>().Ret<Ret>()           // d h0, d h_init
                                  .Ret<Ret>().Ret<Ret>()           // d w_i (I, H), d w_h (H, H)
                                  .Ret<Ret>()                      // d b: the sum of dG (H,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("batch_major")
                                  .Attr<bool>("small")
                                  .Attr<int64_t>("activation"));
