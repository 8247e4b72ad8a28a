// jaxrnn's LSTM for x86-64 CPUs with AVX-512: the whole unroll in one XLA FFI call.
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
// computed in tiles of (4 gates x U units) x (16 or 32 batch rows): each
// weight is broadcast once per tile and multiplies the one or two batch
// registers, and the tile's accumulators hold all four gates of its U units, so
// c_t and h_t are finished right there. The weights are packed once per call
// so that a tile reads its (I+H) x 4U block contiguously.
//
// Threads. A step is split into one share of contiguous hidden units per
// thread (c and h of a unit are only ever written by its share), and the only
// exchange is h_t, which every share of the next step reads: the shares of
// step t+1 start when all of step t's are done (Phases, below), with h and the
// transposed x_t double-buffered so that step t+1's are written while step
// t's are still read. The helper threads come from XLA's own intra-op pool.
//
// The backward pass mirrors it: per step, each share turns d h_t, d c_t and
// the kept gate activations of its units into the gate pre-activation
// gradients dG_t (written out for the weight gradients, which JAX computes
// afterwards as large matmuls), then, once every share's dG_t is there,
// computes its units' part of d h_{t-1} = dG_t W_h^T.
//
// Built on first use by jaxrnn/native/__init__.py with the machine's C++
// compiler (-march=native); without AVX-512 it builds a stub that reports
// itself unavailable and jaxrnn keeps to its XLA loop.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#if defined(__AVX512F__)
#include <immintrin.h>

#include <atomic>
#include <functional>
#include <thread>

namespace {

// ---------------------------------------------------------------- math ----

// exp(x) for |x| <= 88: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, and a
// degree-6 polynomial for 2^f (relative error about 2e-7).
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-88.f));
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

// tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at both ends, no cancellation
// trouble at float32 tolerance.
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
struct Phases {
  int64_t phases;
  int shares;
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
    const int64_t total = phases * shares;
    for (int64_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      wait_for(k / shares * shares);  // all of the previous phase
      task(k / shares, static_cast<int>(k % shares));
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

// Run `task(phase, share)` for every phase in order, with `shares` - 1 helpers
// from XLA's intra-op thread pool (whose threads would otherwise spin idle).
// A helper that runs after the call has returned finds no task left: it only
// touches the shared counters, never the call's buffers.
void run_phases(ffi::ThreadPool& pool, int64_t phases, int shares, std::function<void(int64_t, int)> task) {
  auto state = std::make_shared<Phases>();
  state->phases = phases;
  state->shares = shares;
  state->task = std::move(task);
  for (int i = 1; i < shares; ++i) pool.Schedule([state] { state->work(); });
  state->work();
  state->wait_for(phases * shares);  // a helper may still be in its last task
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

// Copy columns [r0, r1) of B rows of `ld` floats into a (R, Bp) block.
void transpose_in(const float* src, int B, int64_t ld, float* dst, int Bp, int r0, int r1) {
  for (int b = 0; b < B; ++b)
    for (int r = r0; r < r1; ++r) dst[int64_t{r} * Bp + b] = src[b * ld + r];
}

// Where row (t, b) of a sequence array starts, in rows: time-major (T, B, .)
// arrays have strides (B, 1), batch-major (B, T, .) ones (1, T). The kernel
// takes either, so that jaxrnn.scan's default batch-major layout costs no
// transposes around the call.
struct Rows {
  int64_t t, b;
  int64_t at(int step) const { return step * t; }
};

// --------------------------------------------------------------- forward ----

constexpr int kUnits = 2;  // units per forward tile: 4 gates x 2 units x 2 registers = 16 accumulators

struct Forward {
  int T, B, I, H, Bp, K;  // K = I + H
  Rows layout;            // of x, ys and operands
  const float *x, *w_i, *w_h, *b;
  float* wp;         // packed weights, see pack()
  float *ys, *res;   // res: (T, 5H, Bp) = i, f, g, o, c per step; null for inference
  float* operands;   // (T, B, I + H) = [x_t, h_{t-1}], each step's matmul operand; null for inference
  float* cT;         // (H, Bp), the running memory cell
  float* a[2];       // (K, Bp) twice: [x_t^T; h_{t-1}^T], double-buffered

  // Weights of units [u0, u0 + U) as a (K, 4, U) block, blocks one after the
  // other; each thread packs the blocks it reads.
  void pack(int ulo, int uhi) const {
    for (int u0 = ulo; u0 < uhi; u0 += kUnits) {
      const int U = std::min(kUnits, H - u0);
      float* block = wp + int64_t{u0} * 4 * K;
      for (int k = 0; k < K; ++k) {
        const float* row = k < I ? w_i + int64_t{k} * 4 * H : w_h + int64_t{k - I} * 4 * H;
        for (int g = 0; g < 4; ++g)
          for (int j = 0; j < U; ++j) block[(int64_t{k} * 4 + g) * U + j] = row[g * H + u0 + j];
      }
    }
  }

  template <int U, int NB>
  void tile(int t, int u0, int b0, const float* at, float* h_next) const {
    __m512 acc[4 * U][NB];
    for (int c = 0; c < 4 * U; ++c)
      for (int s = 0; s < NB; ++s) acc[c][s] = _mm512_set1_ps(b[(c / U) * H + u0 + c % U]);
    const float* w = wp + int64_t{u0} * 4 * K;
    const float* col = at + b0;
    for (int k = 0; k < K; ++k) {
      __m512 v[NB];
      for (int s = 0; s < NB; ++s) v[s] = _mm512_loadu_ps(col + int64_t{k} * Bp + 16 * s);
#pragma GCC unroll 8
      for (int c = 0; c < 4 * U; ++c) {
        const __m512 wc = _mm512_set1_ps(w[k * 4 * U + c]);
        for (int s = 0; s < NB; ++s) acc[c][s] = _mm512_fmadd_ps(wc, v[s], acc[c][s]);
      }
    }
    for (int j = 0; j < U; ++j) {
      const int u = u0 + j;
      for (int s = 0; s < NB; ++s) {
        const int64_t at_u = int64_t{u} * Bp + b0 + 16 * s;
        const __m512 i = sigmoid16(acc[0 * U + j][s]), f = sigmoid16(acc[1 * U + j][s]);
        const __m512 g = tanh16(acc[2 * U + j][s]), o = sigmoid16(acc[3 * U + j][s]);
        const __m512 c = _mm512_fmadd_ps(f, _mm512_loadu_ps(cT + at_u), _mm512_mul_ps(i, g));
        const __m512 h = _mm512_mul_ps(o, tanh16(c));
        _mm512_storeu_ps(cT + at_u, c);
        _mm512_storeu_ps(h_next + at_u, h);
        if (res) {
          float* r = res + int64_t{t} * 5 * H * Bp + b0 + 16 * s;
          _mm512_storeu_ps(r + int64_t{0 * H + u} * Bp, i);
          _mm512_storeu_ps(r + int64_t{1 * H + u} * Bp, f);
          _mm512_storeu_ps(r + int64_t{2 * H + u} * Bp, g);
          _mm512_storeu_ps(r + int64_t{3 * H + u} * Bp, o);
          _mm512_storeu_ps(r + int64_t{4 * H + u} * Bp, c);
        }
      }
    }
  }

  template <int U>
  void units(int t, int u0, const float* at, float* h_next) const {
    for_batch_tiles(Bp, [&](int b0, auto nb) { tile<U, decltype(nb)::value>(t, u0, b0, at, h_next); });
  }

  // Units [ulo, uhi) of the feature-major `h` into B rows of `ld` floats.
  void put_h(const float* h, int ulo, int uhi, float* dst, int64_t ld) const {
    for (int bb = 0; bb < B; ++bb)
      for (int u = ulo; u < uhi; ++u) dst[bb * ld + u] = h[int64_t{u} * Bp + bb];
  }

  // Step t's x_t^T into `a`, rows [r0, r1); for training also x_t into its operand row.
  void take_x(int t, float* a, int r0, int r1) const {
    const float* x_t = x + layout.at(t) * I;
    transpose_in(x_t, B, layout.b * I, a, Bp, r0, r1);
    if (operands)
      for (int bb = 0; bb < B; ++bb)
        std::memcpy(operands + (layout.at(t) + bb * layout.b) * K + r0, x_t + bb * layout.b * I + r0,
                    sizeof(float) * (r1 - r0));
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
      if (operands) put_h(a[0] + int64_t{I} * Bp, ulo, uhi, operands + I, layout.b * K);
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
    put_h(h_next, ulo, uhi, ys + layout.at(t) * H, layout.b * H);
    if (t + 1 < T) {
      take_x(t + 1, next, cols.lo, cols.hi);
      if (operands) put_h(h_next, ulo, uhi, operands + layout.at(t + 1) * K + I, layout.b * K);
    }
  }
};

// -------------------------------------------------------------- backward ----

constexpr int kRows = 8;  // units per backward tile: 8 x 2 registers = 16 accumulators

struct Backward {
  int T, B, H, Bp;
  Rows layout;  // of dys and dg
  const float *res, *c0, *dys;
  const float* w_h;
  float* wp;        // W_h packed as (4H, kRows) blocks of units, see pack()
  float* dg;        // (T, B, 4H)
  float* dh;        // (H, Bp): d h_t from step t+1 (recurrent part), then d h_{t-1}
  float* dc;        // (H, Bp)
  float* g[2];      // (4H, Bp) twice: dG_t^T, double-buffered
  float* db;        // (4H, 16): d b, each lane summing its own batch rows

  void pack(int ulo, int uhi) const {
    for (int u0 = ulo; u0 < uhi; u0 += kRows) {
      const int R = std::min(kRows, H - u0);
      float* block = wp + int64_t{u0} * 4 * H;
      for (int k = 0; k < 4 * H; ++k)
        for (int j = 0; j < R; ++j) block[int64_t{k} * R + j] = w_h[int64_t{u0 + j} * 4 * H + k];
    }
  }

  // dG_t for units [ulo, uhi): the LSTM step's derivative, given d h_t (its
  // output's cotangent plus the recurrent part) and d c_t. Units go 16 at a
  // time so that d ys is read, and dG written, a row of 16 floats at once:
  // (B, ., 4H) rows are 4H floats apart, and 16 stores that far apart land in
  // one L1 set.
  void gates(int t, int ulo, int uhi, float* gt) const {
    const float* r = res + int64_t{t} * 5 * H * Bp;
    const float* c_prev_t = t > 0 ? res + (int64_t{t - 1} * 5 + 4) * H * Bp : c0;
    const float* dy = dys + layout.at(t) * H;
    float* out = dg + layout.at(t) * 4 * H;
    const int64_t dy_ld = layout.b * H, out_ld = layout.b * 4 * H;
    const __m512 one = _mm512_set1_ps(1.f);
    alignas(64) float dy_block[16][16], dg_block[4][16][16];  // [unit][lane], [gate][unit][lane]
    for (int u0 = ulo; u0 < uhi; u0 += 16) {
      const int n = std::min(16, uhi - u0);
      for (int b0 = 0; b0 < Bp; b0 += 16) {
        const int lanes = std::min(16, B - b0);
        std::memset(dy_block, 0, sizeof(dy_block));
        for (int l = 0; l < lanes; ++l)
          for (int j = 0; j < n; ++j) dy_block[j][l] = dy[(b0 + l) * dy_ld + u0 + j];
        for (int j = 0; j < n; ++j) {
          const int64_t at = int64_t{u0 + j} * Bp + b0;
          const __m512 d_h = _mm512_add_ps(_mm512_load_ps(dy_block[j]), _mm512_loadu_ps(dh + at));
          const __m512 i = _mm512_loadu_ps(r + at), f = _mm512_loadu_ps(r + int64_t{H} * Bp + at);
          const __m512 gg = _mm512_loadu_ps(r + int64_t{2 * H} * Bp + at);
          const __m512 o = _mm512_loadu_ps(r + int64_t{3 * H} * Bp + at);
          const __m512 tc = tanh16(_mm512_loadu_ps(r + int64_t{4 * H} * Bp + at));
          // d c_t = (carried d c_t) + d h_t * o * (1 - tanh(c_t)^2)
          const __m512 d_c = _mm512_fmadd_ps(_mm512_mul_ps(d_h, o), _mm512_fnmadd_ps(tc, tc, one), _mm512_loadu_ps(dc + at));
          const __m512 d[4] = {
              _mm512_mul_ps(_mm512_mul_ps(d_c, gg), _mm512_mul_ps(i, _mm512_sub_ps(one, i))),
              _mm512_mul_ps(_mm512_mul_ps(d_c, _mm512_loadu_ps(c_prev_t + at)), _mm512_mul_ps(f, _mm512_sub_ps(one, f))),
              _mm512_mul_ps(_mm512_mul_ps(d_c, i), _mm512_fnmadd_ps(gg, gg, one)),
              _mm512_mul_ps(_mm512_mul_ps(d_h, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o))),
          };
          _mm512_storeu_ps(dc + at, _mm512_mul_ps(d_c, f));  // d c_{t-1}, through the forget gate
          for (int q = 0; q < 4; ++q) {
            float* sum = db + int64_t{q * H + u0 + j} * 16;
            _mm512_storeu_ps(sum, _mm512_add_ps(_mm512_loadu_ps(sum), d[q]));
            _mm512_storeu_ps(gt + int64_t{q * H} * Bp + at, d[q]);
            _mm512_store_ps(dg_block[q][j], d[q]);
          }
        }
        for (int l = 0; l < lanes; ++l)
          for (int q = 0; q < 4; ++q)
            for (int j = 0; j < n; ++j) out[(b0 + l) * out_ld + q * H + u0 + j] = dg_block[q][j][l];
      }
    }
  }

  // d h_{t-1} for units [u0, u0 + R): (R, 4H) rows of W_h times dG_t^T.
  template <int R, int NB>
  void tile(int u0, int b0, const float* gt) const {
    __m512 acc[R][NB];
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s) acc[j][s] = _mm512_setzero_ps();
    const float* w = wp + int64_t{u0} * 4 * H;
    for (int k = 0; k < 4 * H; ++k) {
      __m512 v[NB];
      for (int s = 0; s < NB; ++s) v[s] = _mm512_loadu_ps(gt + int64_t{k} * Bp + b0 + 16 * s);
#pragma GCC unroll 8
      for (int j = 0; j < R; ++j) {
        const __m512 wj = _mm512_set1_ps(w[k * R + j]);
        for (int s = 0; s < NB; ++s) acc[j][s] = _mm512_fmadd_ps(wj, v[s], acc[j][s]);
      }
    }
    for (int j = 0; j < R; ++j)
      for (int s = 0; s < NB; ++s) _mm512_storeu_ps(dh + int64_t{u0 + j} * Bp + b0 + 16 * s, acc[j][s]);
  }

  template <int R>
  void rows(int u0, const float* gt) const {
    for_batch_tiles(Bp, [&](int b0, auto nb) { tile<R, decltype(nb)::value>(u0, b0, gt); });
  }

  void recurrent(int u0, const float* gt) const {
    switch (std::min(kRows, H - u0)) {
      case 8: return rows<8>(u0, gt);
      case 7: return rows<7>(u0, gt);
      case 6: return rows<6>(u0, gt);
      case 5: return rows<5>(u0, gt);
      case 4: return rows<4>(u0, gt);
      case 3: return rows<3>(u0, gt);
      case 2: return rows<2>(u0, gt);
      default: return rows<1>(u0, gt);
    }
  }

  // Phase 0 packs W_h; then, for t = T-1 down to 0, one phase for dG_t and one
  // for d h_{t-1}. Share j of n owns a contiguous range of units in both.
  void phase(int64_t p, int j, int n) const {
    const int groups = (H + kRows - 1) / kRows;
    const Range mine = share(groups, j, n);
    const int ulo = std::min(H, mine.lo * kRows), uhi = std::min(H, mine.hi * kRows);
    if (p == 0) return pack(ulo, uhi);
    const int t = T - 1 - static_cast<int>((p - 1) / 2);
    float* gt = g[t & 1];
    if (p % 2) return gates(t, ulo, uhi, gt);
    for (int gi = mine.lo; gi < mine.hi; ++gi) recurrent(gi * kRows, gt);
  }
};

// ------------------------------------------------------------ handlers ----

int threads_for(int64_t requested, int H) {
  const int n = static_cast<int>(std::max<int64_t>(1, requested));
  return std::min(n, std::max(1, H / 16));
}

ffi::Error Fail(const char* what) { return ffi::Error(ffi::ErrorCode::kInvalidArgument, what); }

ffi::Error LstmForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                       ffi::Buffer<ffi::F32> w_i, ffi::Buffer<ffi::F32> w_h, ffi::Buffer<ffi::F32> b,
                       ffi::ResultBuffer<ffi::F32> ys, ffi::ResultBuffer<ffi::F32> h_last,
                       ffi::ResultBuffer<ffi::F32> c_last, ffi::ResultBuffer<ffi::F32> res,
                       ffi::ResultBuffer<ffi::F32> operands, int64_t threads, bool keep, bool batch_major) {
  const auto xd = x.dimensions();
  if (xd.size() != 3) return Fail("jaxrnn_lstm_forward: x must be (T, B, I) or (B, T, I)");
  const int T = xd[batch_major ? 1 : 0], B = xd[batch_major ? 0 : 1], I = xd[2], H = h0.dimensions()[1];
  const Rows layout = batch_major ? Rows{1, T} : Rows{B, 1};
  const int Bp = round16(B), K = I + H;
  std::unique_ptr<float[]> wp(new float[int64_t{K} * 4 * H]);
  std::vector<float> a0(int64_t{K} * Bp, 0.f), a1(int64_t{K} * Bp, 0.f), c(int64_t{H} * Bp, 0.f);
  transpose_in(h0.typed_data(), B, H, a0.data() + int64_t{I} * Bp, Bp, 0, H);
  transpose_in(c0.typed_data(), B, H, c.data(), Bp, 0, H);
  Forward f{T, B, I, H, Bp, K, layout, x.typed_data(), w_i.typed_data(), w_h.typed_data(), b.typed_data(), wp.get(), ys->typed_data(),
            keep ? res->typed_data() : nullptr, keep ? operands->typed_data() : nullptr, c.data(),
            {a0.data(), a1.data()}};
  const int n = threads_for(threads, H);
  run_phases(pool, int64_t{T} + 1, n, [&f, n](int64_t p, int j) { f.phase(p, j, n); });
  const float* h = (T % 2 ? a1 : a0).data() + int64_t{I} * Bp;
  for (int bb = 0; bb < B; ++bb)
    for (int u = 0; u < H; ++u) {
      h_last->typed_data()[int64_t{bb} * H + u] = h[int64_t{u} * Bp + bb];
      c_last->typed_data()[int64_t{bb} * H + u] = c[int64_t{u} * Bp + bb];
    }
  return ffi::Error::Success();
}

ffi::Error LstmBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> res, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> w_h,
                        ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_last,
                        ffi::Buffer<ffi::F32> dc_last, ffi::ResultBuffer<ffi::F32> dg,
                        ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0,
                        ffi::ResultBuffer<ffi::F32> db, int64_t threads, bool batch_major) {
  const auto dd = dys.dimensions();
  const int T = dd[batch_major ? 1 : 0], B = dd[batch_major ? 0 : 1], H = dd[2], Bp = round16(B);
  const Rows layout = batch_major ? Rows{1, T} : Rows{B, 1};
  std::unique_ptr<float[]> wp(new float[int64_t{4} * H * H]);
  std::vector<float> dh(int64_t{H} * Bp, 0.f), dc(int64_t{H} * Bp, 0.f), c0t(int64_t{H} * Bp, 0.f);
  std::vector<float> g0(int64_t{4} * H * Bp, 0.f), g1(int64_t{4} * H * Bp, 0.f), db_lanes(int64_t{4} * H * 16, 0.f);
  transpose_in(dh_last.typed_data(), B, H, dh.data(), Bp, 0, H);
  transpose_in(dc_last.typed_data(), B, H, dc.data(), Bp, 0, H);
  transpose_in(c0.typed_data(), B, H, c0t.data(), Bp, 0, H);
  const int n = threads_for(threads, H);
  Backward bw{T, B, H, Bp, layout, res.typed_data(), c0t.data(), dys.typed_data(), w_h.typed_data(), wp.get(), dg->typed_data(),
              dh.data(), dc.data(), {g0.data(), g1.data()}, db_lanes.data()};
  run_phases(pool, 2 * int64_t{T} + 1, n, [&bw, n](int64_t p, int j) { bw.phase(p, j, n); });
  for (int bb = 0; bb < B; ++bb)
    for (int u = 0; u < H; ++u) {
      dh0->typed_data()[int64_t{bb} * H + u] = dh[int64_t{u} * Bp + bb];
      dc0->typed_data()[int64_t{bb} * H + u] = dc[int64_t{u} * Bp + bb];
    }
  for (int k = 0; k < 4 * H; ++k) {  // padded batch rows hold exact zeros in dG, so all lanes count
    float sum = 0.f;
    for (int l = 0; l < 16; ++l) sum += db_lanes[int64_t{k} * 16 + l];
    db->typed_data()[k] = sum;
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" int jaxrnn_native_available() { return 1; }

#else  // no AVX-512: a stub, so that the library still loads and says why.

namespace {
ffi::Error Unavailable() {
  return ffi::Error(ffi::ErrorCode::kUnimplemented, "jaxrnn's native LSTM needs AVX-512");
}
ffi::Error LstmForward(ffi::ThreadPool, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                       ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                       ffi::ResultBuffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>,
                       ffi::ResultBuffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>, int64_t, bool, bool) {
  return Unavailable();
}
ffi::Error LstmBackward(ffi::ThreadPool, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                        ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::F32>,
                        ffi::ResultBuffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>, ffi::ResultBuffer<ffi::F32>,
                        ffi::ResultBuffer<ffi::F32>, int64_t, bool) {
  return Unavailable();
}
}  // namespace

extern "C" int jaxrnn_native_available() { return 0; }

#endif

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_forward, LstmForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (T, B, I), or (B, T, I)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 (B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_i (I, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b (4H,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // ys, laid out as x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h_T (B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c_T (B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // kept activations (T, 5H, Bp), or (0,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // [x_t, h_{t-1}], laid out as x, or (0,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("keep")
                                  .Attr<bool>("batch_major"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxrnn_lstm_backward, LstmBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kept activations (T, 5H, Bp)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 (B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_h (H, 4H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d ys, laid out as x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d h_T (B, H)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // d c_T (B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dG, laid out as x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d h_0 (B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d c_0 (B, H)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d b (4H,)
                                  .Attr<int64_t>("threads")
                                  .Attr<bool>("batch_major"));
