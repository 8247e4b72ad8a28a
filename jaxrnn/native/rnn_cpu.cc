// jaxrnn's LSTM and GRU for x86-64 CPUs with AVX-512: the whole unroll in one XLA FFI call.
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
// axis, so one 512-bit register holds 16 batch rows of one feature. A step is
//
//     G^T (4H, Bp) = W^T (4H, I+H) . [x_t^T ; h_{t-1}^T] (I+H, Bp)
//
// computed in tiles of (4 slots x U units) x (16 or 32 batch rows): each
// weight is broadcast once per tile and multiplies the one or two batch
// registers, and the tile's accumulators hold all four gate slots of its U
// units (the GRU's 3 gates take 4 slots: h W_hn apart from x W_in), so c_t and
// h_t are finished right there. The weights are packed once per call so that a
// tile reads its (I+H) x G U block contiguously.
//
// Threads. A step is split into one share of contiguous hidden units per
// thread (c and h of a unit are only ever written by its share), and the only
// exchange is h_t, which every share of the next step reads: the shares of
// step t+1 start when all of step t's are done (Phases, below), with h and the
// transposed x_t double-buffered so that step t+1's are written while step
// t's are still read. Helper threads are the call's own, or XLA's intra-op
// pool's for calls inside an XLA loop (run_phases).
//
// The backward pass mirrors it: per step, each share turns d h_t (and the
// LSTM's d c_t) and the kept gate activations of its units into the gate pre-activation
// gradients dG_t (written out for the weight gradients, which JAX computes
// afterwards as one large matmul), then, once every share's dG_t is there,
// computes its units' part of d h_{t-1} = dG_t W_h^T and its share of
// d x_t = dG_t W_i^T, and goes straight on to its units' dG_{t-1}: one
// exchange per step, as forward.
//
// Built on first use by jaxrnn/native/__init__.py with the machine's C++
// compiler (-march=native); without AVX-512 it builds a stub that reports
// itself unavailable and jaxrnn keeps to its XLA loop. Shared by both cells:
// the loop, the tiles, the threads; each cell adds its slots and its
// elementwise step (Lstm, Gru below).

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
#include <immintrin.h>

#include <atomic>
#include <functional>
#include <thread>
#include <type_traits>

#include <sys/mman.h>

namespace {

// ---------------------------------------------------------------- math ----

// exp(x): 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and a degree-6
// polynomial for 2^f (relative error about 2e-7). x is first clamped to
// [-88, 89], which keeps n finite (at x = +-inf, t - n would be inf - inf):
// below -88 exp is 0 or a denormal, which XLA's CPU code (and this kernel,
// run under the caller's MXCSR, see Phases) flushes to 0 anyway; from 88.73 on
// the result overflows to +inf, as exp does, so that sigmoid(-inf) is exactly
// 0, as in XLA, and its derivative s (1 - s) too. The clamp keeps NaN: x86
// min/max return their SECOND operand when either is NaN, so x goes second.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-88.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 sigmoid16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at both ends (+-1 at +-inf,
// as XLA's), NaN at NaN, no cancellation trouble at float32 tolerance.
inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e = exp16(_mm512_add_ps(x, x));
  return _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(e, one)));
}

// ------------------------------------------------------------- threads ----

// The work of one call as a sequence of phases (a step, say), each split into
// `shares` tasks that may run in parallel; a phase's tasks start only when all
// of the previous phase's are done. Any thread may run any task: threads claim
// them in order from one counter, so a helper that starts late, or not at all
// (XLA's thread pool busy with other work), costs parallelism, never a stall,
// and the calling thread alone finishes the call if need be.
//
// Every task runs under the calling thread's MXCSR (`csr`): XLA runs its CPU
// code with denormals flushed (FTZ and DAZ), and a helper from elsewhere that
// did not would make, say, a denormal x_t times an infinite weight inf where
// XLA's loop gives NaN (0 * inf), and results depend on which thread ran a task.
struct Phases {
  int64_t phases;
  int shares;
  unsigned csr;
  std::function<void(int64_t, int)> task;  // task(phase, share)
  std::atomic<int64_t> next{0}, done{0};

  // Spin while another thread finishes its task (tens of microseconds), then
  // yield the core, so that more threads than free cores slow down, not stall.
  void wait_for(int64_t count) {
    for (int spins = 0; done.load(std::memory_order_acquire) < count; ++spins) {
      if (spins < 4096) _mm_pause();
      else std::this_thread::yield();
    }
  }

  void work() {
    const unsigned own = _mm_getcsr();
    _mm_setcsr(csr);
    const int64_t total = phases * shares;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      wait_for(k / shares * shares);  // all of the previous phase
      task(k / shares, static_cast<int>(k % shares));
      done.fetch_add(1, std::memory_order_acq_rel);
    }
    _mm_setcsr(own);  // a pool thread goes back to its own mode
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
  state->csr = _mm_getcsr();
  state->task = std::move(task);
  std::vector<std::thread> own;
  for (int i = 1; i < shares; ++i) {
    if (pooled) pool.Schedule([state] { state->work(); });
    else own.emplace_back([state] { state->work(); });
  }
  state->work();
  state->wait_for(phases * shares);  // a helper may still be in its last task
  for (auto& t : own) t.join();
}

// Share `tid` of `n`, [lo, hi), of `groups` groups of units.
struct Range {
  int lo, hi;
};
inline Range share(int groups, int tid, int n) {
  return {static_cast<int>(int64_t{groups} * tid / n), static_cast<int>(int64_t{groups} * (tid + 1) / n)};
}

// Batch tiles: 32 rows (two registers) while they last, then 16.
template <typename F>
void for_batch_tiles(int Bp, F&& f) {
  int b = 0;
  for (; b + 32 <= Bp; b += 32) f(b, std::integral_constant<int, 2>{});
  if (b < Bp) f(b, std::integral_constant<int, 1>{});
}

inline int round16(int b) { return (b + 15) / 16 * 16; }

// --------------------------------------------------------- transposes ----
//
// Between the kernel's feature-major states and the row-major (batch rows)
// arrays of its callers, 16 x 16 blocks at a time through registers: a column
// of a row-major array is 16 floats `ld` apart, and reading or writing those
// one float at a time cost more than the step's elementwise math.

// r[i] <- column i of the 16 x 16 matrix whose row j is r[j].
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // 2 x 2 blocks of floats
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  auto lo64 = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  auto hi64 = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int i = 0; i < 4; ++i) {  // 4 x 4
    r[4 * i] = lo64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = hi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = lo64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = hi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)  // 8 x 8, moving 128-bit lanes
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {  // 16 x 16
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
}

inline __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1); }

// Columns [0, n) of rows [0, lanes) of a row-major array (rows `ld` floats
// apart), n, lanes <= 16: r[j] <- column j, its lanes past `lanes` zero, and
// those of rows not in `live` (the padded steps of a batch with lengths).
inline void gather16(const float* src, int64_t ld, int n, int lanes, __m512 (&r)[16], __mmask16 live = 0xFFFF) {
  for (int l = 0; l < 16; ++l)
    r[l] = l < lanes && (live >> l & 1) ? _mm512_maskz_loadu_ps(first(n), src + l * ld) : _mm512_setzero_ps();
  transpose16(r);
}

// The inverse: r[j] (lanes of column j) into columns [0, n) of rows [0, lanes), zeros into rows not in `live`.
inline void scatter16(__m512 (&r)[16], int n, int lanes, float* dst, int64_t ld, __mmask16 live = 0xFFFF) {
  transpose16(r);
  for (int l = 0; l < lanes; ++l)
    _mm512_mask_storeu_ps(dst + l * ld, first(n), live >> l & 1 ? r[l] : _mm512_setzero_ps());
}

// Which rows of each 16 a transpose takes (bit l of live[b0 / 16]: row b0 + l); null: all of them.
inline __mmask16 rows_of(const uint16_t* live, int b0) { return live ? live[b0 / 16] : 0xFFFF; }

// Columns [r0, r1) of B rows of `ld` floats into rows [r0, r1) of a (., Bp)
// feature-major array, its padding lanes zero, and the lanes of rows not in `live`.
void transpose_in(const float* src, int B, int64_t ld, float* dst, int Bp, int r0, int r1,
                  const uint16_t* live = nullptr) {
  __m512 r[16];
  for (int c0 = r0; c0 < r1; c0 += 16) {
    const int n = std::min(16, r1 - c0);
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      gather16(src + b0 * ld + c0, ld, n, std::min(16, B - b0), r, rows_of(live, b0));
      for (int j = 0; j < n; ++j) _mm512_storeu_ps(dst + int64_t{c0 + j} * Bp + b0, r[j]);
    }
  }
}

// Rows [r0, r1) of a (., Bp) feature-major array into columns [r0, r1) of B rows of `ld` floats; rows
// not in `live` get zeros.
void transpose_out(const float* src, int Bp, int r0, int r1, int B, float* dst, int64_t ld,
                   const uint16_t* live = nullptr) {
  __m512 r[16];
  for (int c0 = r0; c0 < r1; c0 += 16) {
    const int n = std::min(16, r1 - c0);
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      for (int j = 0; j < 16; ++j)
        r[j] = j < n ? _mm512_loadu_ps(src + int64_t{c0 + j} * Bp + b0) : _mm512_setzero_ps();
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
  __mmask16 live(int t, int b0) const { return rows_of(valid_row(t), b0); }
  __mmask16 restarts(int t, int b0) const { return reset.empty() ? 0 : reset[int64_t{t} * blocks + b0 / 16]; }
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

// What a cell adds to the shared loop. A forward tile keeps four accumulator
// slots per unit; a cell says which slot each of its gate blocks of w_i (the
// x_t rows of the step's matmul) and of w_h (the h_{t-1} rows) adds into.
// The LSTM's gates take both halves summed; the GRU keeps h W_hn (slot 3)
// apart from x W_in (slot 2), because r multiplies it alone.
struct Lstm {
  static constexpr int kGates = 4;
  static constexpr int kXSlot[4] = {0, 1, 2, 3}, kHSlot[4] = {0, 1, 2, 3};
};
struct Gru {
  static constexpr int kGates = 3;
  static constexpr int kXSlot[3] = {0, 1, 2}, kHSlot[3] = {0, 1, 3};
};
constexpr int kSlots = 4;  // per unit, both cells
constexpr int kKept = 5;   // H-row blocks kept per step for the backward pass, both cells

// --------------------------------------------------------------- forward ----

constexpr int kUnits = 2;  // units per forward tile: 4 slots x 2 units x 2 registers = 16 accumulators

template <class Cell>
struct Forward {
  static constexpr int G = Cell::kGates;
  int T, B, I, H, Bp, K;  // K = I + H
  Rows in, out;           // of x; of ys and operands
  const float *x, *w_i, *w_h;
  const float* bias[kSlots];  // each slot's H biases
  float* wp;                  // packed weights, see pack()
  float *ys, *res;  // res: (T, 5H, Bp), per step LSTM i, f, g, o, c_{t-1}; GRU r, z, n, h W_hn + b_hn, h_{t-1}
  float* operands;  // [x_t, h_{t-1}] per step, each step's matmul operand; null for inference
  float* cT;        // LSTM: (H, Bp), the running memory cell
  float* a[2];      // (K, Bp) twice: [x_t^T; h_{t-1}^T], double-buffered
  const Masks* m;
  const float *h_init, *c_init;  // (H, Bp): the carry a reset starts over from (c: LSTM); null without resets

  // Weights of units [u0, u0 + U) as a (K, G, U) block, blocks one after the
  // other; each share packs the blocks it reads. Eight blocks at a time, so
  // that every cache line of a weight row read is used whole (one block at a
  // time read each line eight times over, a row of G H floats apart).
  void pack(int ulo, int uhi) const {
    for (int v0 = ulo; v0 < uhi; v0 += 8 * kUnits) {
      const int v1 = std::min(uhi, v0 + 8 * kUnits);
      for (int k = 0; k < K; ++k) {
        const float* row = k < I ? w_i + int64_t{k} * G * H : w_h + int64_t{k - I} * G * H;
        for (int u0 = v0; u0 < v1; u0 += kUnits) {
          const int U = std::min(kUnits, H - u0);
          float* to = wp + int64_t{u0} * G * K + int64_t{k} * G * U;
          for (int g = 0; g < G; ++g)
            for (int j = 0; j < U; ++j) to[g * U + j] = row[g * H + u0 + j];
        }
      }
    }
  }

  // acc[slot[g] * U + j] += w[k, g, j] * col[k] for k in [k0, k1).
  template <int U, int NB>
  static void accumulate(__m512 (&acc)[kSlots * U][NB], const float* w, const float* col, int Bp, int k0, int k1,
                         const int (&slot)[G]) {
    for (int k = k0; k < k1; ++k) {
      __m512 v[NB];
      for (int s = 0; s < NB; ++s) v[s] = _mm512_loadu_ps(col + int64_t{k} * Bp + 16 * s);
#pragma GCC unroll 16
      for (int c = 0; c < G * U; ++c) {
        const __m512 wc = _mm512_set1_ps(w[k * G * U + c]);
        for (int s = 0; s < NB; ++s) acc[slot[c / U] * U + c % U][s] = _mm512_fmadd_ps(wc, v[s], acc[slot[c / U] * U + c % U][s]);
      }
    }
  }

  template <int U, int NB>
  void tile(int t, int u0, int b0, const float* at, float* h_next) const {
    __m512 acc[kSlots * U][NB];
    for (int c = 0; c < kSlots * U; ++c)
      for (int s = 0; s < NB; ++s) acc[c][s] = _mm512_set1_ps(bias[c / U][u0 + c % U]);
    const float* w = wp + int64_t{u0} * G * K;
    accumulate<U, NB>(acc, w, at + b0, Bp, 0, I, Cell::kXSlot);
    accumulate<U, NB>(acc, w, at + b0, Bp, I, K, Cell::kHSlot);
    for (int j = 0; j < U; ++j) {
      const int u = u0 + j;
      for (int s = 0; s < NB; ++s) {
        const int64_t at_u = int64_t{u} * Bp + b0 + 16 * s;
        // A padded step (not in `live`) keeps the carry: h and c are blended with their previous values.
        const __mmask16 live = m->live(t, b0 + 16 * s);
        const __m512 h_prev = _mm512_loadu_ps(at + int64_t{I} * Bp + at_u);
        __m512 kept[kKept], h;
        if constexpr (std::is_same_v<Cell, Lstm>) {
          const __m512 i = sigmoid16(acc[0 * U + j][s]), f = sigmoid16(acc[1 * U + j][s]);
          const __m512 g = tanh16(acc[2 * U + j][s]), o = sigmoid16(acc[3 * U + j][s]);
          const __m512 c_prev = _mm512_loadu_ps(cT + at_u);
          const __m512 c = _mm512_fmadd_ps(f, c_prev, _mm512_mul_ps(i, g));
          h = _mm512_mul_ps(o, tanh16(c));
          _mm512_storeu_ps(cT + at_u, _mm512_mask_blend_ps(live, c_prev, c));
          // c_{t-1}, not c_t: the backward pass recomputes c_t from it exactly as here, and reads the
          // carry a step started from, which for a padded or reset row is not the previous step's c_t.
          kept[0] = i, kept[1] = f, kept[2] = g, kept[3] = o, kept[4] = c_prev;
        } else {  // h = (1 - z) n + z h_{t-1}, n = tanh(x W_in + b_in + r (h W_hn + b_hn))
          const __m512 r = sigmoid16(acc[0 * U + j][s]), z = sigmoid16(acc[1 * U + j][s]);
          const __m512 hn = acc[3 * U + j][s];
          const __m512 n = tanh16(_mm512_fmadd_ps(r, hn, acc[2 * U + j][s]));
          h = _mm512_fmadd_ps(z, _mm512_sub_ps(h_prev, n), n);
          kept[0] = r, kept[1] = z, kept[2] = n, kept[3] = hn, kept[4] = h_prev;
        }
        _mm512_storeu_ps(h_next + at_u, _mm512_mask_blend_ps(live, h_prev, h));
        if (res) {
          float* r = res + int64_t{t} * kKept * H * Bp + at_u;
          for (int q = 0; q < kKept; ++q) _mm512_storeu_ps(r + int64_t{q} * H * Bp, kept[q]);
        }
      }
    }
  }

  template <int U>
  void units(int t, int u0, const float* at, float* h_next) const {
    for_batch_tiles(Bp, [&](int b0, auto nb) { tile<U, decltype(nb)::value>(t, u0, b0, at, h_next); });
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
    if (operands)
      for (int bb = 0; bb < B; ++bb) {
        float* to = operands + (out.at(t) + bb * out.b) * K + r0;
        if (rows_of(live, bb / 16 * 16) >> bb % 16 & 1) std::memcpy(to, x_t + bb * in.b * I + r0, sizeof(float) * (r1 - r0));
        else std::memset(to, 0, sizeof(float) * (r1 - r0));
      }
  }

  // The rows that start over at step t take the initial carry (units [ulo, uhi) of h, and of the LSTM's c).
  void restart(int t, int ulo, int uhi, float* h) const {
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      const __mmask16 k = m->restarts(t, b0);
      if (!k) continue;
      for (int u = ulo; u < uhi; ++u) {
        const int64_t at_u = int64_t{u} * Bp + b0;
        _mm512_mask_storeu_ps(h + at_u, k, _mm512_loadu_ps(h_init + at_u));
        if constexpr (std::is_same_v<Cell, Lstm>) _mm512_mask_storeu_ps(cT + at_u, k, _mm512_loadu_ps(c_init + at_u));
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
      else units<1>(t, u0, at, h_next);
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
    _mm_prefetch(s.p + row * s.stride + 64 * line, _MM_HINT_T1);
    if (++line < s.lines) return;
    line = 0;
    if (++row < s.rows) return;
    row = 0, ++i;
  }
};

constexpr int kRows = 8;  // rows per backward tile: 8 x 2 registers = 16 accumulators

template <class Cell>
struct Backward {
  static constexpr int G = Cell::kGates;
  int T, B, I, H, Bp;
  Rows in, out;     // of dys; of dg and dx
  const float *res, *dys;
  const float *w_i, *w_h;
  float* wp;        // [W_i; W_h] packed as (G H, kRows) blocks of rows, see pack()
  float* dg;        // 4 H per step: LSTM d(i, f, g, o) pre-activations; GRU d r, d z, d(x W_in), d(h W_hn)
  float* dx;        // I per step
  float* dh;        // (H, Bp): d h_t from step t+1, then d h_{t-1}
  float* dc;        // (H, Bp): LSTM d c_t; GRU the part of d h_{t-1} that bypasses W_h, z d h_t
  float* dxt;       // (I, Bp): d x_t, feature-major, on its way out
  float* g[2];      // (4H, Bp) twice: dG_t^T, all four slots, double-buffered
  float* db;        // (4H, 16): sums of dg, each lane over its own batch rows (real ones only)
  const Masks* m;
  float *dh_init, *dc_init;  // (H, Bp): the initial carry's gradient from the steps that reset to it

  // Rows [lo, hi) of [W_i; W_h] (I + H rows of G H) as (G H, R) blocks of
  // kRows rows, so that a tile reads its block contiguously: block[k R + j] =
  // row j's k-th weight, 16 k at a time through a register transpose.
  void pack(int lo, int hi) const {
    const int GH = G * H;
    for (int r0 = lo; r0 < hi; r0 += kRows) {
      const int R = std::min(kRows, hi - r0);
      const float* row[kRows];
      for (int j = 0; j < R; ++j) row[j] = r0 + j < I ? w_i + int64_t{r0 + j} * GH : w_h + int64_t{r0 + j - I} * GH;
      float* block = wp + int64_t{r0} * GH;
      __m512 v[16];
      for (int k0 = 0; k0 < GH; k0 += 16) {
        const int n = std::min(16, GH - k0);
        for (int j = 0; j < 16; ++j) v[j] = j < R ? _mm512_maskz_loadu_ps(first(n), row[j] + k0) : _mm512_setzero_ps();
        transpose16(v);  // v[i]'s first R lanes: the R rows' weight k0 + i
        for (int i = 0; i < n; ++i)
          _mm256_mask_storeu_ps(block + int64_t{k0 + i} * R, static_cast<__mmask8>((1u << R) - 1),
                                _mm512_castps512_ps256(v[i]));
      }
    }
  }

  // The step's derivative for units [ulo, uhi), given d h_t (its output's
  // cotangent plus what step t+1 sent back). Units go 16 at a time so that
  // d ys is read, and dg written, through 16 x 16 transposes a row of 16
  // floats at once: rows are H or 4H floats apart, and 16 single-float stores
  // that far apart land in one L1 set. dg goes out with streaming stores: the
  // weight gradients read it back from memory anyway (T B 4H floats), and
  // plain stores would first read every line in. The padded batch rows are
  // computed too, and need not be finite (their zero inputs times an infinite
  // weight are NaN): they stay out of the bias gradient, the one sum across
  // lanes; everything else reads them lane by lane and never writes them out.
  void gates(int t, int ulo, int uhi, float* gt) const {
    const float* r = res + int64_t{t} * kKept * H * Bp;
    const float* dy = dys + in.at(t) * H;
    float* to = dg + out.at(t) * 4 * H;
    const int64_t dy_ld = in.b * H, to_ld = out.b * 4 * H;
    const __m512 one = _mm512_set1_ps(1.f);
    __m512 dy_block[16], dg_block[4][16] = {};  // [unit], [slot][unit]: 16 lanes each
    for (int u0 = ulo; u0 < uhi; u0 += 16) {
      const int n = std::min(16, uhi - u0);
      for (int b0 = 0; b0 < Bp; b0 += 16) {
        const int lanes = std::min(16, B - b0);
        gather16(dy + b0 * dy_ld + u0, dy_ld, n, lanes, dy_block);
        // A padded step (not in `live`) passed its carry through and output zeros: it gets no cotangent
        // (d ys there is dropped), and the carried one goes past it to the step before, as in the XLA loop.
        const __mmask16 live = m->live(t, b0);
        for (int j = 0; j < n; ++j) {
          const int64_t at = int64_t{u0 + j} * Bp + b0;
          const __m512 dh_carried = _mm512_loadu_ps(dh + at);
          const __m512 d_h = _mm512_maskz_add_ps(live, dy_block[j], dh_carried);
          __m512 kept[kKept];
          for (int q = 0; q < kKept; ++q) kept[q] = _mm512_loadu_ps(r + int64_t{q} * H * Bp + at);
          __m512 d[4];  // dg's four slots
          if constexpr (std::is_same_v<Cell, Lstm>) {
            const __m512 i = kept[0], f = kept[1], gg = kept[2], o = kept[3], c_prev = kept[4];
            const __m512 tc = tanh16(_mm512_fmadd_ps(f, c_prev, _mm512_mul_ps(i, gg)));  // c_t as forward made it
            const __m512 dc_carried = _mm512_loadu_ps(dc + at);
            // d c_t = (carried d c_t) + d h_t * o * (1 - tanh(c_t)^2)
            const __m512 d_c = _mm512_fmadd_ps(_mm512_mul_ps(d_h, o), _mm512_fnmadd_ps(tc, tc, one),
                                               _mm512_maskz_mov_ps(live, dc_carried));
            d[0] = _mm512_mul_ps(_mm512_mul_ps(d_c, gg), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
            d[1] = _mm512_mul_ps(_mm512_mul_ps(d_c, c_prev), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
            d[2] = _mm512_mul_ps(_mm512_mul_ps(d_c, i), _mm512_fnmadd_ps(gg, gg, one));
            d[3] = _mm512_mul_ps(_mm512_mul_ps(d_h, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o)));
            __m512 dc_prev = _mm512_mul_ps(d_c, f);  // d c_{t-1}, through the forget gate
            if (m->lengths()) {  // plus what passed a padded step; d h_{t-1} starts from it (see rows)
              dc_prev = _mm512_add_ps(dc_prev, _mm512_maskz_mov_ps(~live, dc_carried));
              _mm512_storeu_ps(dh + at, _mm512_maskz_mov_ps(~live, dh_carried));
            }
            _mm512_storeu_ps(dc + at, dc_prev);
          } else {
            const __m512 rr = kept[0], z = kept[1], nn = kept[2], hn = kept[3], h_prev = kept[4];
            d[2] = _mm512_mul_ps(_mm512_mul_ps(d_h, _mm512_sub_ps(one, z)), _mm512_fnmadd_ps(nn, nn, one));
            d[1] = _mm512_mul_ps(_mm512_mul_ps(d_h, _mm512_sub_ps(h_prev, nn)), _mm512_mul_ps(z, _mm512_sub_ps(one, z)));
            d[0] = _mm512_mul_ps(_mm512_mul_ps(d[2], hn), _mm512_mul_ps(rr, _mm512_sub_ps(one, rr)));
            d[3] = _mm512_mul_ps(d[2], rr);
            __m512 bypass = _mm512_mul_ps(d_h, z);  // d h_{t-1} through z, added by the matmul
            if (m->lengths()) bypass = _mm512_add_ps(bypass, _mm512_maskz_mov_ps(~live, dh_carried));
            _mm512_storeu_ps(dc + at, bypass);
          }
          for (int q = 0; q < 4; ++q) {  // the bias gradient sums the batch's rows, not the padding's
            float* sum = db + int64_t{q * H + u0 + j} * 16;
            const __m512 so_far = _mm512_loadu_ps(sum);
            _mm512_storeu_ps(sum, _mm512_mask_add_ps(so_far, first(lanes), so_far, d[q]));
            _mm512_storeu_ps(gt + int64_t{q * H} * Bp + at, d[q]);
            dg_block[q][j] = d[q];
          }
        }
        for (int q = 0; q < 4; ++q) {
          float* o = to + b0 * to_ld + q * H + u0;
          if (n == 16 && reinterpret_cast<uintptr_t>(o) % 64 == 0 && to_ld % 16 == 0) {
            transpose16(dg_block[q]);
            for (int l = 0; l < lanes; ++l) _mm512_stream_ps(o + l * to_ld, dg_block[q][l]);
          } else {
            scatter16(dg_block[q], n, lanes, o, to_ld);
          }
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
    __m512 acc[R][NB];
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s)
        acc[j][s] = from ? _mm512_loadu_ps(from + int64_t{j} * Bp + b0 + 16 * s) : _mm512_setzero_ps();
    for (int gate = 0; gate < G; ++gate) {
      const float* w = wp + (int64_t{r0} * G + int64_t{gate} * R) * H;
      const float* col = gt + int64_t{slot[gate]} * H * Bp + b0;
      for (int k = 0; k < H; ++k) {
        __m512 v[NB];
        for (int s = 0; s < NB; ++s) v[s] = _mm512_loadu_ps(col + int64_t{k} * Bp + 16 * s);
        if (k % 4 == 3) ahead.next();
#pragma GCC unroll 8
        for (int j = 0; j < R; ++j) {
          const __m512 wj = _mm512_set1_ps(w[k * R + j]);
          for (int s = 0; s < NB; ++s) acc[j][s] = _mm512_fmadd_ps(wj, v[s], acc[j][s]);
        }
      }
    }
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s) _mm512_storeu_ps(to + int64_t{j} * Bp + b0 + 16 * s, acc[j][s]);
  }

  // Rows [lo, hi) of [d x_t; d h_{t-1}], all lanes. d h_{t-1} starts from
  // what gates() left: the GRU's z d h_t, which bypasses W_h, and with lengths
  // the cotangent that passed a padded step (the LSTM's, in dh itself).
  void rows(int lo, int hi, const float* gt, Prefetch& ahead) const {
    for (int r0 = lo; r0 < hi; r0 += kRows) {
      const bool x = r0 < I;
      const float* from = x ? nullptr
                          : std::is_same_v<Cell, Gru> ? dc + int64_t{r0 - I} * Bp
                          : m->lengths()              ? dh + int64_t{r0 - I} * Bp
                                                      : nullptr;
      float* to = x ? dxt + int64_t{r0} * Bp : dh + int64_t{r0 - I} * Bp;
      const int(&slot)[G] = x ? Cell::kXSlot : Cell::kHSlot;
      auto run = [&](auto rows) {
        for_batch_tiles(Bp, [&](int b0, auto nb) {
          tile<decltype(rows)::value, decltype(nb)::value>(r0, b0, slot, gt, from, to, ahead);
        });
      };
      switch (std::min(kRows, hi - r0)) {
        case 8: run(std::integral_constant<int, 8>{}); break;
        case 7: run(std::integral_constant<int, 7>{}); break;
        case 6: run(std::integral_constant<int, 6>{}); break;
        case 5: run(std::integral_constant<int, 5>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        default: run(std::integral_constant<int, 1>{});
      }
    }
  }

  // The rows that reset at step t started it from the initial carry: their d h_{t-1} (and the LSTM's
  // d c_{t-1}), units [ulo, uhi), goes to the initial carry's gradient, and none to step t - 1.
  void cut(int t, int ulo, int uhi) const {
    for (int b0 = 0; b0 < Bp; b0 += 16) {
      const __mmask16 k = m->restarts(t, b0);
      if (!k) continue;
      for (int u = ulo; u < uhi; ++u) {
        const int64_t at = int64_t{u} * Bp + b0;
        for (auto [d, init] : {std::pair{dh, dh_init}, std::pair{dc, dc_init}}) {
          if (!init) continue;  // the GRU has no c
          const __m512 v = _mm512_loadu_ps(d + at), sum = _mm512_loadu_ps(init + at);
          _mm512_storeu_ps(init + at, _mm512_mask_add_ps(sum, k, sum, v));
          _mm512_storeu_ps(d + at, _mm512_maskz_mov_ps(static_cast<__mmask16>(~k), v));
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
  // 80% of this machine's matmul rate.
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
    _mm_sfence();  // the streaming stores of dg, before the phase counts as done
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
// activations, the matmul operands, dG). XLA allocates its temp buffer afresh on every call, and glibc
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

// A call's packed weights, (I+H) x G*H floats, leased from buffers kept across calls. Allocated afresh
// they would be fresh pages on every call once they pass glibc's largest heap block (32 MiB, an LSTM at
// H = 1024): zeroed and faulted in 4 KiB at a time, about 8,200 faults a forward call. A lease takes the
// smallest free buffer that fits; when none fits it frees the largest (too small) one and allocates, so
// the pool holds at most as many buffers as calls ever ran at once. The contents are stale: every caller
// overwrites the whole buffer before reading it.
class PackedWeights {
 public:
  explicit PackedWeights(int64_t n) {
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
  ~PackedWeights() {
    std::lock_guard<std::mutex> lock(pool().mutex);
    auto& free = pool().free;
    auto at = std::lower_bound(free.begin(), free.end(), buffer_.size,
                               [](const Buffer& b, int64_t size) { return b.size < size; });
    free.insert(at, std::move(buffer_));  // kept sorted by size: the first that fits is the smallest
  }
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;
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
             const float* (&bias)[kSlots], float* ys, float* h_last, float* c_last, float* res, float* operands,
             int64_t threads, bool pooled) {
  const int Bp = round16(seq.B), K = I + H;
  if (res) advise_huge_pages(res, int64_t{seq.T} * kKept * H * Bp * 4);
  if (operands) advise_huge_pages(operands, int64_t{seq.T} * seq.B * K * 4);
  PackedWeights wp(int64_t{K} * Cell::kGates * H);
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

// The backward loop of either cell. dc_last, dc0 and dc_init: LSTM only; dh_init and dc_init (the initial
// carry's gradient from the steps that reset to it): written only with resets.
template <class Cell>
void backward(ffi::ThreadPool& pool, const float* res, Shape seq, int I, int H, const float* w_i, const float* w_h,
              const float* dys, const float* dh_last, const float* dc_last, const Masks& masks, float* dg, float* dx,
              float* dh0, float* dc0, float* dh_init, float* dc_init, float* db, int64_t threads, bool pooled) {
  const int Bp = round16(seq.B);
  advise_huge_pages(dg, int64_t{seq.T} * seq.B * 4 * H * 4);
  PackedWeights wp(int64_t{I + H} * Cell::kGates * H);
  std::vector<float> dh = feature_major(dh_last, seq.B, H, Bp);
  std::vector<float> dc = dc_last ? feature_major(dc_last, seq.B, H, Bp) : std::vector<float>(int64_t{H} * Bp, 0.f);
  std::vector<float> dhi, dci;
  if (masks.resets()) {
    dhi.assign(int64_t{H} * Bp, 0.f);
    if (dc_init) dci.assign(int64_t{H} * Bp, 0.f);
  }
  std::vector<float> dxt(int64_t{I} * Bp, 0.f), g0(int64_t{4} * H * Bp, 0.f), g1(int64_t{4} * H * Bp, 0.f),
      lanes(int64_t{4} * H * 16, 0.f);
  Backward<Cell> bw{seq.T, seq.B, I, H, Bp, seq.in, seq.out, res, dys, w_i, w_h, wp.get(), dg, dx,
                    dh.data(), dc.data(), dxt.data(), {g0.data(), g1.data()}, lanes.data(), &masks,
                    dhi.empty() ? nullptr : dhi.data(), dci.empty() ? nullptr : dci.data()};
  const int n = threads_for(threads, H);
  run_phases(pool, pooled, int64_t{seq.T} + 1, n, [&bw, n](int64_t p, int j) { bw.phase(p, j, n); });
  batch_major_out(dh.data(), seq.B, H, Bp, dh0);
  if (dc0) batch_major_out(dc.data(), seq.B, H, Bp, dc0);
  if (!dhi.empty()) batch_major_out(dhi.data(), seq.B, H, Bp, dh_init);
  if (!dci.empty()) batch_major_out(dci.data(), seq.B, H, Bp, dc_init);
  for (int k = 0; k < 4 * H; ++k) {  // padded batch rows were never added (see gates), so all lanes count
    float sum = 0.f;
    for (int l = 0; l < 16; ++l) sum += lanes[int64_t{k} * 16 + l];
    db[k] = sum;
  }
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
                       int64_t threads, bool pooled, bool keep, bool batch_major) {
  const int H = h0.dimensions()[1];
  const float* bias[kSlots] = {b.typed_data(), b.typed_data() + H, b.typed_data() + 2 * H, b.typed_data() + 3 * H};
  const Shape seq = steps(x, start, ys, batch_major);
  forward<Lstm>(pool, x.typed_data(), seq, x.dimensions()[2], H, h0.typed_data(), c0.typed_data(),
                h_init.typed_data(), c_init.typed_data(), masks_of(lengths, resets, seq), w_i.typed_data(),
                w_h.typed_data(), bias, ys->typed_data(), h_last->typed_data(), c_last->typed_data(),
                keep ? res->typed_data() : nullptr, keep ? operands->typed_data() : nullptr, threads, pooled);
  return ffi::Error::Success();
}

ffi::Error GruForward(ffi::ThreadPool pool, F32 x, S32 start, F32 h0, F32 h_init, S32 lengths, U8 resets, F32 w_i,
                      F32 w_h, F32 b, F32 b_hn, Out ys, Out h_last, Out res, Out operands, int64_t threads,
                      bool pooled, bool keep, bool batch_major) {
  const int H = h0.dimensions()[1];
  const float* bias[kSlots] = {b.typed_data(), b.typed_data() + H, b.typed_data() + 2 * H, b_hn.typed_data()};
  const Shape seq = steps(x, start, ys, batch_major);
  forward<Gru>(pool, x.typed_data(), seq, x.dimensions()[2], H, h0.typed_data(), nullptr, h_init.typed_data(),
               nullptr, masks_of(lengths, resets, seq), w_i.typed_data(), w_h.typed_data(), bias, ys->typed_data(),
               h_last->typed_data(), nullptr, keep ? res->typed_data() : nullptr,
               keep ? operands->typed_data() : nullptr, threads, pooled);
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::ThreadPool pool, F32 res, F32 w_i, F32 w_h, F32 dys, S32 start, F32 dh_last,
                        F32 dc_last, S32 lengths, U8 resets, Out dg, Out dx, Out dh0, Out dc0, Out dh_init,
                        Out dc_init, Out db, int64_t threads, bool pooled, bool batch_major) {
  const Shape seq = steps(dys, start, dx, batch_major);
  backward<Lstm>(pool, res.typed_data(), seq, w_i.dimensions()[0], dys.dimensions()[2], w_i.typed_data(),
                 w_h.typed_data(), dys.typed_data(), dh_last.typed_data(), dc_last.typed_data(),
                 masks_of(lengths, resets, seq), dg->typed_data(), dx->typed_data(), dh0->typed_data(),
                 dc0->typed_data(), dh_init->typed_data(), dc_init->typed_data(), db->typed_data(), threads, pooled);
  return ffi::Error::Success();
}

ffi::Error GruBackward(ffi::ThreadPool pool, F32 res, F32 w_i, F32 w_h, F32 dys, S32 start, F32 dh_last,
                       S32 lengths, U8 resets, Out dg, Out dx, Out dh0, Out dh_init, Out db, int64_t threads,
                       bool pooled, bool batch_major) {
  const Shape seq = steps(dys, start, dx, batch_major);
  backward<Gru>(pool, res.typed_data(), seq, w_i.dimensions()[0], dys.dimensions()[2], w_i.typed_data(),
                w_h.typed_data(), dys.typed_data(), dh_last.typed_data(), nullptr, masks_of(lengths, resets, seq),
                dg->typed_data(), dx->typed_data(), dh0->typed_data(), nullptr, dh_init->typed_data(), nullptr,
                db->typed_data(), threads, pooled);
  return ffi::Error::Success();
}

}  // namespace

extern "C" int jaxrnn_native_available() { return 1; }

#else  // no AVX-512: stubs, so that the library still loads and says why.

namespace {
using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;
using U8 = ffi::Buffer<ffi::U8>;
using Out = ffi::ResultBuffer<ffi::F32>;
ffi::Error Unavailable() { return ffi::Error(ffi::ErrorCode::kUnimplemented, "jaxrnn's native kernels need AVX-512"); }
ffi::Error LstmForward(ffi::ThreadPool, F32, S32, F32, F32, F32, F32, S32, U8, F32, F32, F32, Out, Out, Out, Out, Out,
                       int64_t, bool, bool, bool) {
  return Unavailable();
}
ffi::Error GruForward(ffi::ThreadPool, F32, S32, F32, F32, S32, U8, F32, F32, F32, F32, Out, Out, Out, Out, int64_t,
                      bool, bool, bool) {
  return Unavailable();
}
ffi::Error LstmBackward(ffi::ThreadPool, F32, F32, F32, F32, S32, F32, F32, S32, U8, Out, Out, Out, Out, Out, Out, Out,
                        int64_t, bool, bool) {
  return Unavailable();
}
ffi::Error GruBackward(ffi::ThreadPool, F32, F32, F32, F32, S32, F32, S32, U8, Out, Out, Out, Out, Out, int64_t, bool,
                       bool) {
  return Unavailable();
}
}  // namespace

extern "C" int jaxrnn_native_available() { return 0; }

#endif

// Sequence arrays (x, ys, dys, dg, dx, operands) are (T, B, .), or (B, T, .) with batch_major; x and dys
// may hold more steps than the call runs, which starts at their step `start`.
// kept: (T, 5H, Bp), operands: (.., I + H); both (0,) without keep (inference).
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
                                  .Attr<bool>("batch_major"));

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
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>()                       // kept
                                  .Arg<In>().Arg<In>()             // w_i, w_h
                                  .Arg<In>().Arg<Int>()            // d ys, start
                                  .Arg<In>().Arg<In>()             // d h_T, d c_T
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Ret<Ret>().Ret<Ret>()           // dg (.., 4H), d x (.., I)
                                  .Ret<Ret>().Ret<Ret>()           // d h0, d c0
                                  .Ret<Ret>().Ret<Ret>()           // d h_init, d c_init
                                  .Ret<Ret>()                      // sum of dg (4H,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_gru_backward, GruBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<In>().Arg<In>().Arg<In>()   // kept, w_i, w_h
                                  .Arg<In>().Arg<Int>().Arg<In>()  // d ys, start, d h_T
                                  .Arg<Int>().Arg<Flags>()         // lengths, resets
                                  .Ret<Ret>().Ret<Ret>()           // dg (.., 4H), d x (.., I)
                                  .Ret<Ret>().Ret<Ret>()           // d h0, d h_init
                                  .Ret<Ret>()                      // sum of dg (4H,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("pooled")
                                  .Attr<bool>("batch_major"));
