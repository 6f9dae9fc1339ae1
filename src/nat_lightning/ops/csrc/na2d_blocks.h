// Geometry and inner loops of the fused neighborhood-attention kernel (na2d_cpu.cpp).
//
// Layout: for one (batch, head) every map (queries, keys, values, their gradients) is a
// transposed fp32 copy (row, D, Wp), Wp = W + L: the columns of a row are contiguous, so L
// consecutive query columns of one row sit in the L lanes of a vector. A query column j far
// enough from the borders ("interior") attends to columns j + d*(b - k/2), b < k, which for L
// consecutive queries are L consecutive floats: every key, value and gradient access is one
// unaligned vector load or store, and the k*k logits of L queries need no horizontal sums.
// Queries near a border have clamped windows; their blocks gather their windows into tiles of
// the same (b, c, lane) shape first, and the inner loops run unchanged on them.
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

// Up to L consecutive query columns of a row. Interior lanes see columns j - k/2 + b; all lanes
// of a border block see the same columns, start + b, and keep their rpb indices, (k, L).
struct Block {
  int j0, n;
  bool interior;
  int start;
  std::vector<int> bias;
};

inline std::vector<Block> column_blocks(const Axis& ax) {
  int lo = 0;
  while (lo < ax.length && !ax.interior(lo)) ++lo;
  int hi = lo;
  while (hi < ax.length && ax.interior(hi)) ++hi;
  std::vector<Block> blocks;
  auto cut = [&](int from, int to, bool interior) {
    for (int j = from; j < to; j += L) {
      Block blk{j, std::min(L, to - j), interior, ax.start(j), {}};
      if (!interior) {
        blk.bias.resize(ax.k * L);
        for (int b = 0; b < ax.k; ++b)
          for (int l = 0; l < L; ++l) blk.bias[b * L + l] = ax.bias(j + std::min(l, blk.n - 1), b);
      }
      blocks.push_back(std::move(blk));
    }
  };
  cut(0, lo, false);  // left border: every window starts at column 0
  cut(lo, hi, true);
  cut(hi, ax.length, false);  // right border: every window starts at length - k
  return blocks;
}

// Where neighbour b, channel c of the block's lanes lies: base + b*bstride + c*cstride, the
// lanes contiguous there, or (bcast) one value for every lane.
struct Src {
  float* base;
  long bstride, cstride;
  bool bcast;
};

template <bool B>
inline vf lanes(const float* p) {
  return B ? simd::set1(*p) : simd::load(p);
}

// out[b] = sum_c x[c] * src(b, c) for b < K, x's channel c at x + c*xs: K logits of L queries.
template <int K, bool B>
inline void dot_fixed(const float* x, long xs, const Src& s, int D, float* out) {
  vf acc[K];
  for (int b = 0; b < K; ++b) acc[b] = simd::zero();
  for (int c = 0; c < D; ++c) {
    vf xv = simd::load(x + c * xs);
    const float* p = s.base + c * s.cstride;
#pragma GCC unroll 16
    for (int b = 0; b < K; ++b) acc[b] = simd::fma(xv, lanes<B>(p + b * s.bstride), acc[b]);
  }
  for (int b = 0; b < K; ++b) simd::store(out + b * L, acc[b]);
}

template <bool B>
inline void dot_any(const float* x, long xs, const Src& s, int k, int D, float* out) {
  for (int b = 0; b < k; ++b) {
    vf acc = simd::zero();
    for (int c = 0; c < D; ++c)
      acc = simd::fma(simd::load(x + c * xs), lanes<B>(s.base + b * s.bstride + c * s.cstride), acc);
    simd::store(out + b * L, acc);
  }
}

template <bool B>
inline void dot_row(const float* x, long xs, const Src& s, int k, int D, float* out) {
  switch (k) {
    case 3: dot_fixed<3, B>(x, xs, s, D, out); break;
    case 5: dot_fixed<5, B>(x, xs, s, D, out); break;
    case 7: dot_fixed<7, B>(x, xs, s, D, out); break;
    case 9: dot_fixed<9, B>(x, xs, s, D, out); break;
    case 11: dot_fixed<11, B>(x, xs, s, D, out); break;
    case 13: dot_fixed<13, B>(x, xs, s, D, out); break;
    default: dot_any<B>(x, xs, s, k, D, out);
  }
}

// out[a*k + b] = x . window a's neighbour b, for the k window rows: (k*k, L).
inline void dot_rows(const float* x, long xs, const Src* src, int k, int D, float* out) {
  for (int a = 0; a < k; ++a) {
    if (src[a].bcast) {
      dot_row<true>(x, xs, src[a], k, D, out + a * k * L);
    } else {
      dot_row<false>(x, xs, src[a], k, D, out + a * k * L);
    }
  }
}

// out[c] = mul * sum_{a,b} w[a*k+b] * src_a(b, c): (D, L), channels register-blocked by CB.
template <int CB, bool B>
inline void weighted_chunk(const float* w, const Src* src, int k, int c0, float mul, float* out) {
  vf acc[CB];
  for (int cc = 0; cc < CB; ++cc) acc[cc] = simd::zero();
  for (int a = 0; a < k; ++a)
    for (int b = 0; b < k; ++b) {
      vf wv = simd::load(w + (a * k + b) * L);
      const float* p = src[a].base + b * src[a].bstride + c0 * src[a].cstride;
#pragma GCC unroll 8
      for (int cc = 0; cc < CB; ++cc) acc[cc] = simd::fma(wv, lanes<B>(p + cc * src[a].cstride), acc[cc]);
    }
  for (int cc = 0; cc < CB; ++cc) simd::store(out + (c0 + cc) * L, simd::mul(acc[cc], simd::set1(mul)));
}

template <bool B>
inline void weighted_sum_as(const float* w, const Src* src, int k, int D, float mul, float* out) {
  int c = 0;
  for (; c + 8 <= D; c += 8) weighted_chunk<8, B>(w, src, k, c, mul, out);
  for (; c < D; ++c) weighted_chunk<1, B>(w, src, k, c, mul, out);
}

// The window rows of one block are all interior or all border (broadcast).
inline void weighted_sum(const float* w, const Src* src, int k, int D, float mul, float* out) {
  if (src[0].bcast) {
    weighted_sum_as<true>(w, src, k, D, mul, out);
  } else {
    weighted_sum_as<false>(w, src, k, D, mul, out);
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
