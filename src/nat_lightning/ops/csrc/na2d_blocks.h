// Geometry and inner loops of the fused neighborhood-attention kernel (na2d_cpu.cpp).
//
// Layout: for one (batch, head, dilation group) every map (queries, keys, values, gradients)
// is a transposed fp32 copy (row, D, Wp), Wp >= W + L: the columns of a row are contiguous, so L
// consecutive query columns of one row sit in the L lanes of a vector. A query column j far
// enough from the borders ("interior") attends to columns j - k/2 + b, b < k, which for L
// consecutive queries are L consecutive floats: every key and value access is one unaligned
// vector load, and the k*k logits of L queries need no horizontal sums (softmax runs down the
// columns). The queries near a border share one clamped window: their blocks broadcast it.
// Up to three query rows share each key (value) row's loads; the key and value gradients are
// summed with the keys in the lanes (key_chunk), so their inner loops store nothing.
#pragma once

#include <algorithm>
#include <vector>

#include "na2d_simd.h"

namespace na2d {

using simd::L;
using simd::vf;

// NATTEN's window arithmetic along one axis of one dilation group (ops/windows.py, d = 1):
// position p sees the k positions from start(p), centred where it can be and clamped at borders.
struct Axis {
  int length, k;
  int start(int p) const { return std::min(std::max(p - k / 2, 0), length - k); }
  int bias(int p, int a) const { return k - 1 + start(p) + a - p; }  // rpb index of neighbour a
  bool interior(int p) const { return start(p) == p - k / 2; }
};

// How a block's lanes read their neighbours from base + lane: kPlain (all interior: lane l
// reads base + l), kPermute (lane l reads base + idx[l], idx[l] < L: one load and a lane
// permutation), kGather (any idx: a gather). base = column j0 - k/2 + shift + b of the key row.
enum Mode { kPlain = 0, kPermute = 1, kGather = 2 };

// L consecutive query columns j0 .. j0+n-1 of a row (lanes past n repeat the last one).
// Queries within k/2 of a border share one clamped window (the left ones start at column 0, the
// right ones at length - k): lanes [0, left) and [right, n). bias: rpb indices, (k, L); mask:
// 1 on interior lanes.
struct Block {
  int j0, n, left, right, shift;  // shift: base's column offset from j0 - k/2
  Mode mode;
  std::vector<int> idx, bias;
  std::vector<float> mask;
};

inline std::vector<Block> column_blocks(const Axis& ax) {
  std::vector<Block> blocks;
  for (int j0 = 0; j0 < ax.length; j0 += L) {
    Block blk{j0, std::min(L, ax.length - j0), 0, 0, 0, kPlain, std::vector<int>(L), std::vector<int>(ax.k * L),
              std::vector<float>(L, 0.0f)};
    int widest = 0;
    bool interior = true;
    for (int l = 0; l < L; ++l) {
      int j = j0 + std::min(l, blk.n - 1);
      blk.idx[l] = ax.start(j) - j0 + ax.k / 2;
      widest = std::max(widest, blk.idx[l]);
      for (int b = 0; b < ax.k; ++b) blk.bias[b * L + l] = ax.bias(j, b);
      if (l >= blk.n) continue;
      blk.mask[l] = ax.interior(j) ? 1.0f : 0.0f;
      interior = interior && ax.interior(j);
      blk.left += j < ax.k / 2;
    }
    blk.right = blk.left;
    while (blk.right < blk.n && ax.interior(j0 + blk.right)) ++blk.right;
    int lowest = *std::min_element(blk.idx.begin(), blk.idx.end());  // < 0 in a last, short block
    blk.shift = std::min(lowest, 0);
    for (int& x : blk.idx) x -= blk.shift;
    blk.mode = interior ? kPlain : widest - blk.shift < L ? kPermute : kGather;
    blocks.push_back(std::move(blk));
  }
  return blocks;
}

// Where neighbour b, channel c of the block's lanes lies: base + b*bstride + c*cstride, read
// as the block's mode says (idx: its lane offsets).
struct Src {
  float* base;
  long bstride, cstride;
  const int* idx;
};

template <int M>
inline simd::vi index_of(const Src& s) {
  return M == kPlain ? simd::vi{} : simd::load_index(s.idx);
}

template <int M>
inline vf lanes(const float* p, simd::vi idx) {
  if constexpr (M == kPlain) return simd::load(p);
  if constexpr (M == kPermute) return simd::permute(simd::load(p), idx);
  return simd::gather(p, idx);
}

// out[b] = sum_c x[c] * src(b, c) for b < K, x's channel c at x + c*xs: K logits of L queries.
template <int K, int M>
inline void dot_fixed(const float* x, long xs, const Src& s, int D, float* out) {
  simd::vi idx = index_of<M>(s);
  vf acc[K];
  for (int b = 0; b < K; ++b) acc[b] = simd::zero();
  for (int c = 0; c < D; ++c) {
    vf xv = simd::load(x + c * xs);
    const float* p = s.base + c * s.cstride;
#pragma GCC unroll 16
    for (int b = 0; b < K; ++b) acc[b] = simd::fma(xv, lanes<M>(p + b * s.bstride, idx), acc[b]);
  }
  for (int b = 0; b < K; ++b) simd::store(out + b * L, acc[b]);
}

template <int M>
inline void dot_any(const float* x, long xs, const Src& s, int k, int D, float* out) {
  simd::vi idx = index_of<M>(s);
  for (int b = 0; b < k; ++b) {
    vf acc = simd::zero();
    for (int c = 0; c < D; ++c)
      acc = simd::fma(simd::load(x + c * xs), lanes<M>(s.base + b * s.bstride + c * s.cstride, idx), acc);
    simd::store(out + b * L, acc);
  }
}

template <int M>
inline void dot_row(const float* x, long xs, const Src& s, int k, int D, float* out) {
  switch (k) {
    case 3: dot_fixed<3, M>(x, xs, s, D, out); break;
    case 5: dot_fixed<5, M>(x, xs, s, D, out); break;
    case 7: dot_fixed<7, M>(x, xs, s, D, out); break;
    case 9: dot_fixed<9, M>(x, xs, s, D, out); break;
    case 11: dot_fixed<11, M>(x, xs, s, D, out); break;
    case 13: dot_fixed<13, M>(x, xs, s, D, out); break;
    default: dot_any<M>(x, xs, s, k, D, out);
  }
}

// out[t][b] = x[t] . src(b) for NR query rows that read the same key row: each key vector is
// loaded once for all of them (NR*K accumulators: K <= 7 with 32 vector registers).
template <int K, int M, int NR>
inline void dot_multi(const float* const* x, long xs, const Src& s, int D, float* const* out) {
  simd::vi idx = index_of<M>(s);
  vf acc[NR][K];
  for (int t = 0; t < NR; ++t)
    for (int b = 0; b < K; ++b) acc[t][b] = simd::zero();
  for (int c = 0; c < D; ++c) {
    const float* p = s.base + c * s.cstride;
    vf kv[K];
#pragma GCC unroll 8
    for (int b = 0; b < K; ++b) kv[b] = lanes<M>(p + b * s.bstride, idx);
#pragma GCC unroll 3
    for (int t = 0; t < NR; ++t) {
      vf xv = simd::load(x[t] + c * xs);
#pragma GCC unroll 8
      for (int b = 0; b < K; ++b) acc[t][b] = simd::fma(xv, kv[b], acc[t][b]);
    }
  }
  for (int t = 0; t < NR; ++t)
    for (int b = 0; b < K; ++b) simd::store(out[t] + b * L, acc[t][b]);
}

template <int K, int M>
inline void dot_multi_rows(int nr, const float* const* x, long xs, const Src& s, int D, float* const* out) {
  if (nr == 3) {
    dot_multi<K, M, 3>(x, xs, s, D, out);
  } else if (nr == 2) {
    dot_multi<K, M, 2>(x, xs, s, D, out);
  } else {
    dot_multi<K, M, 1>(x, xs, s, D, out);
  }
}

// nr (<= 3) query rows against one key row: shared loads for k <= 7 with 16 lanes (AVX-512),
// one row at a time otherwise (fewer registers).
template <int M>
inline void dot_shared(int k, int nr, const float* const* x, long xs, const Src& s, int D, float* const* out) {
  if (L == 16 && k == 3) return dot_multi_rows<3, M>(nr, x, xs, s, D, out);
  if (L == 16 && k == 5) return dot_multi_rows<5, M>(nr, x, xs, s, D, out);
  if (L == 16 && k == 7) return dot_multi_rows<7, M>(nr, x, xs, s, D, out);
  for (int t = 0; t < nr; ++t) dot_row<M>(x[t], xs, s, k, D, out[t]);
}

// out[t][c] += sum_b w[t][b] * src(b, c) for NR query rows that read the same value row, c in
// [c0, c0 + CB): each value vector is loaded once for all of them (NR*CB accumulators).
template <int NR, int CB, int M>
inline void weighted_multi(const float* const* w, const Src& s, int k, int c0, float* const* out) {
  simd::vi idx = index_of<M>(s);
  vf acc[NR][CB];
  for (int t = 0; t < NR; ++t)
    for (int cc = 0; cc < CB; ++cc) acc[t][cc] = simd::load(out[t] + (c0 + cc) * L);
  for (int b = 0; b < k; ++b) {
    vf wv[NR];
    for (int t = 0; t < NR; ++t) wv[t] = simd::load(w[t] + b * L);
    const float* p = s.base + b * s.bstride + c0 * s.cstride;
#pragma GCC unroll 8
    for (int cc = 0; cc < CB; ++cc) {
      vf v = lanes<M>(p + cc * s.cstride, idx);
#pragma GCC unroll 3
      for (int t = 0; t < NR; ++t) acc[t][cc] = simd::fma(wv[t], v, acc[t][cc]);
    }
  }
  for (int t = 0; t < NR; ++t)
    for (int cc = 0; cc < CB; ++cc) simd::store(out[t] + (c0 + cc) * L, acc[t][cc]);
}

template <int NR, int M>
inline void weighted_multi_rows(const float* const* w, const Src& s, int k, int D, float* const* out) {
  int c = 0;
  for (; c + 8 <= D; c += 8) weighted_multi<NR, 8, M>(w, s, k, c, out);
  for (; c < D; ++c) weighted_multi<NR, 1, M>(w, s, k, c, out);
}

// out[t] (D, L) += the weighted sum of one value row for nr (<= 3) query rows reading it.
template <int M>
inline void weighted_shared(int nr, const float* const* w, const Src& s, int k, int D, float* const* out) {
  if (nr == 3) {
    weighted_multi_rows<3, M>(w, s, k, D, out);
  } else if (nr == 2) {
    weighted_multi_rows<2, M>(w, s, k, D, out);
  } else {
    weighted_multi_rows<1, M>(w, s, k, D, out);
  }
}

// d(c, m0 + lane) += sum_b w_b(m0 + k/2 - b + lane) * x(c, m0 + k/2 - b + lane), c in
// [c0, c0 + CB): w_b at w + b*wr and x(c, .) at x + c*xs (both strides also d's), keys in lanes.
template <int CB>
inline void key_chunk(const float* w, long wr, const float* x, long xs, int k, int m0, int c0, float* d) {
  vf acc[CB];
  for (int cc = 0; cc < CB; ++cc) acc[cc] = simd::zero();
  for (int b = 0; b < k; ++b) {
    int j = m0 + k / 2 - b;
    vf wv = simd::load(w + b * wr + j);
    const float* xp = x + c0 * xs + j;
#pragma GCC unroll 8
    for (int cc = 0; cc < CB; ++cc) acc[cc] = simd::fma(wv, simd::load(xp + cc * xs), acc[cc]);
  }
  for (int cc = 0; cc < CB; ++cc) {
    float* p = d + (c0 + cc) * xs + m0;
    simd::store(p, simd::add(simd::load(p), acc[cc]));
  }
}

// Softmax down the k*k logits of each lane, in place; lanes >= n are set to zero.
inline void softmax(float* s, int kk, int n) {
  vf m = simd::load(s);
  for (int t = 1; t < kk; ++t) m = simd::max(m, simd::load(s + t * L));
  vf sum = simd::zero();
  for (int t = 0; t < kk; ++t) {
    vf e = simd::exp(simd::sub(simd::load(s + t * L), m));
    simd::store(s + t * L, e);
    sum = simd::add(sum, e);
  }
  float inv[L];
  simd::store(inv, simd::div(simd::set1(1.0f), sum));
  for (int l = n; l < L; ++l) inv[l] = 0.0f;
  vf iv = simd::load(inv);
  for (int t = 0; t < kk; ++t) simd::store(s + t * L, simd::mul(simd::load(s + t * L), iv));
}

}  // namespace na2d
