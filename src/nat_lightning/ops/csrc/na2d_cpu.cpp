// Fused 2-D neighborhood attention on the CPU: forward and backward, rpb, dilation, any odd
// kernel size and head_dim, strided (e.g. packed qkv) fp32 / bf16 / fp16 inputs, fp32 inside.
// Dilation d splits the map into d*d groups (rows gi::d, columns gj::d), each a dilation-1
// problem. The backward recomputes the softmax; rowsum(dO * O) replaces rowsum(dP * P).
//
// Threads split the (batch, head) pairs; each pair is computed whole by one thread, its key and
// value gradients included, in a fixed order: the results are bitwise the same on every run and
// for every thread count. The layout and inner loops are in na2d_blocks.h. Built just in time by
// nat_lightning/ops/build.py; the Python op around it is nat_lightning/ops/fused.py.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <type_traits>
#include <tuple>

#include "na2d_blocks.h"

namespace na2d {
namespace {

// One dilation group: rows gi, gi+d, ... and columns gj, gj+d, ... of the map attend among
// themselves as a dilation-1 problem of (H, W) = the group's (rows, columns).
struct Geometry {
  int gi, gj, H, W, D, k, Wp;
  float scale;
  Axis rows, cols;
  std::vector<Block> blocks;
  long plane() const { return static_cast<long>(H) * D * Wp; }
  long row(int i) const { return static_cast<long>(i) * D * Wp; }
};

std::vector<Geometry> groups(const at::Tensor& q, int64_t k, int64_t d, double scale) {
  std::vector<Geometry> out;
  for (int gi = 0; gi < d; ++gi)
    for (int gj = 0; gj < d; ++gj) {
      int H = (q.size(1) - gi + d - 1) / d, W = (q.size(2) - gj + d - 1) / d;
      int Wp = (W + 2 * L - 1) / L * L;  // >= W + L, whole vectors: rows start 64-byte aligned
      Geometry g{gi, gj, H, W, static_cast<int>(q.size(4)), static_cast<int>(k), Wp, static_cast<float>(scale),
                 Axis{H, static_cast<int>(k)}, Axis{W, static_cast<int>(k)}, {}};
      g.blocks = column_blocks(g.cols);
      out.push_back(std::move(g));
    }
  return out;
}

template <typename T>
struct Map {  // a strided (B, H, W, heads, D) tensor
  T* data;
  int64_t s[5];
  T& at(int b, int i, int j, int h, int c) const { return data[b * s[0] + i * s[1] + j * s[2] + h * s[3] + c * s[4]]; }
};

template <typename T>
Map<T> map_of(const at::Tensor& t) {
  Map<T> m{t.data_ptr<T>(), {}};
  for (int i = 0; i < 5; ++i) m.s[i] = t.stride(i);
  return m;
}

template <typename T>
Map<T> group_of(const Map<T>& m, const Geometry& g, int d) {  // rows gi::d, columns gj::d
  Map<T> out{m.data + g.gi * m.s[1] + g.gj * m.s[2], {m.s[0], m.s[1] * d, m.s[2] * d, m.s[3], m.s[4]}};
  return out;
}

template <typename T>
void pack(const Map<T>& m, int b, int h, const Geometry& g, float mul, float* dst) {
  for (long row = 0; row < static_cast<long>(g.H) * g.D; ++row)  // the pad columns
    std::fill(dst + row * g.Wp + g.W, dst + (row + 1) * g.Wp, 0.0f);
  for (int i = 0; i < g.H; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      if (m.s[4] == 1) {  // channels contiguous: register transposes
        simd::copy_transposed(&m.at(b, i, 0, h, 0), m.s[2], g.W, g.D, dst + g.row(i), g.Wp, mul);
        continue;
      }
    }
    for (int j = 0; j < g.W; ++j)
      for (int c = 0; c < g.D; ++c) dst[g.row(i) + static_cast<long>(c) * g.Wp + j] = mul * static_cast<float>(m.at(b, i, j, h, c));
  }
}

// m[b, i, j0 + j, h, c] = src[c*ss + j] for j < n: a (D, n) block back to the map's layout.
template <typename T>
void unpack_row(const float* src, long ss, int n, int D, const Map<T>& m, int b, int i, int j0, int h) {
  if constexpr (std::is_same_v<T, float>) {
    if (m.s[4] == 1) {
      simd::copy_transposed(src, ss, D, n, &m.at(b, i, j0, h, 0), m.s[2], 1.0f);
      return;
    }
  }
  for (int j = 0; j < n; ++j)
    for (int c = 0; c < D; ++c) m.at(b, i, j0 + j, h, c) = static_cast<T>(src[c * ss + j]);
}

template <typename T>
void unpack(const float* src, const Geometry& g, int b, int h, const Map<T>& m) {
  for (int i = 0; i < g.H; ++i) unpack_row(src + g.row(i), g.Wp, g.W, g.D, m, b, i, 0, h);
}

// A (H, D, Wp) map with zeroed margins before and after: the key-major pass of the backward
// reads up to L + k floats past either end of a row, where its weights are zero.
class Plane {
 public:
  void init(long size, long margin) {
    buf_.assign(size + 2 * margin + L, 0.0f);
    auto address = reinterpret_cast<std::uintptr_t>(buf_.data() + margin);
    data_ = buf_.data() + margin + (L - address / sizeof(float) % L) % L;  // vector-aligned
    size_ = size;
  }
  float* data() { return data_; }
  void zero() { std::fill(data_, data_ + size_, 0.0f); }

 private:
  std::vector<float> buf_;
  float* data_ = nullptr;
  long size_ = 0;
};

constexpr int kRows = 3;  // query rows that share their key rows' loads (logits_shared)

struct Scratch {  // one thread's buffers; s, dp, pr, sr hold kRows query rows' each
  Plane q, k, v, dout, dk, dv;
  std::vector<float> delta, s, dp, acc, lanes, bk, bv, xt, pr, sr;
  // The probabilities and dS of one query row's interior queries, (k*k, wr): column j at off + j.
  long off, wr;
  Scratch(const Geometry& g, bool backward) : off(L + g.k), wr(g.W + 3L * L + 2L * g.k) {
    long margin = 2L * L + g.k;
    for (auto* x : {&q, &k, &v}) x->init(g.plane(), margin);
    s.resize(kRows * g.k * g.k * L);
    acc.resize(kRows * g.D * L);
    if (!backward) return;
    for (auto* x : {&dout, &dk, &dv}) x->init(g.plane(), margin);
    delta.resize(static_cast<long>(g.H) * g.Wp);
    dp.resize(kRows * g.k * g.k * L);
    lanes.resize((2 * g.k - 1) * g.k * L);
    for (auto* x : {&bk, &bv}) x->resize(2L * g.H * g.k * g.D);
    xt.resize(L * g.D);
    for (auto* x : {&pr, &sr}) x->resize(kRows * g.k * g.k * wr);
  }
};

// Border lanes [l0, l1) of a block share one window, so their key (value) gradient is, per
// window row a and neighbour b, a sum over those lanes of w[a*k+b] * x, (D). It is kept in acc,
// (H, k, D) per side of the map, and added to the gradient map by finish_border.
void border_outer_add(const Geometry& g, float* acc, int i, int l0, int l1, const float* w, const float* x, float* xt) {
  int D = g.D;
  for (int l = l0; l < l1; ++l)
    for (int c = 0; c < D; ++c) xt[l * D + c] = x[static_cast<long>(c) * g.Wp + l];
  for (int a = 0; a < g.k; ++a) {
    float* row = acc + static_cast<long>(g.rows.start(i) + a) * g.k * D;
    for (int b = 0; b < g.k; ++b) {
      const float* wb = w + (a * g.k + b) * L;
      float* o = row + b * D;
      int c = 0;
      for (; c + L <= D; c += L) {  // the lanes' sum in a register, one store
        vf acc = simd::load(o + c);
        for (int l = l0; l < l1; ++l) acc = simd::fma(simd::set1(wb[l]), simd::load(xt + l * D + c), acc);
        simd::store(o + c, acc);
      }
      for (; c < D; ++c)
        for (int l = l0; l < l1; ++l) o[c] += wb[l] * xt[l * D + c];
    }
  }
}

void finish_border(const Geometry& g, const float* acc, float* dst) {
  for (int side = 0; side < 2; ++side) {
    int start = side == 0 ? 0 : g.W - g.k;
    const float* a = acc + static_cast<long>(side) * g.H * g.k * g.D;
    for (int r = 0; r < g.H; ++r)
      for (int b = 0; b < g.k; ++b)
        for (int c = 0; c < g.D; ++c) dst[g.row(r) + static_cast<long>(c) * g.Wp + start + b] += a[(static_cast<long>(r) * g.k + b) * g.D + c];
  }
}

// The key (value) gradients from the interior queries of row i: for key m of window row a,
// the sum over b of w[a*k+b](query m + k/2 - b) * x(c, m + k/2 - b), keys in the lanes.
void key_major(const Geometry& g, const float* w, long wr, const float* x, float* dst, int i) {
  for (int a = 0; a < g.k; ++a) {
    float* d = dst + g.row(g.rows.start(i) + a);
    const float* wa = w + a * g.k * wr;
    for (int m0 = 0; m0 < g.W; m0 += L) {
      int c = 0;
      for (; c + 8 <= g.D; c += 8) key_chunk<8>(wa, wr, x, g.Wp, g.k, m0, c, d);
      for (; c < g.D; ++c) key_chunk<1>(wa, wr, x, g.Wp, g.k, m0, c, d);
    }
  }
}

void add_bias(const Geometry& g, const float* rpb, int i, const Block& blk, float* s) {
  int k = g.k, n2 = 2 * k - 1;
  for (int a = 0; a < k; ++a) {
    const float* row = rpb + g.rows.bias(i, a) * n2;
    for (int b = 0; b < k; ++b) {
      float* sb = s + (a * k + b) * L;
      if (blk.mode == kPlain) {
        simd::store(sb, simd::add(simd::load(sb), simd::set1(row[k / 2 + b])));
      } else {
        for (int l = 0; l < L; ++l) sb[l] += row[blk.bias[b * L + l]];
      }
    }
  }
}

// rpb gradient: interior blocks add into per-lane sums (lanes, (2k-1, k, L)), border ones into grad.
void add_bias_grad(const Geometry& g, int i, const Block& blk, const float* ds, float* lanes, float* grad) {
  int k = g.k, n2 = 2 * k - 1;
  for (int a = 0; a < k; ++a) {
    int bh = g.rows.bias(i, a);
    for (int b = 0; b < k; ++b) {
      const float* d = ds + (a * k + b) * L;
      if (blk.mode == kPlain) {
        float* acc = lanes + (bh * k + b) * L;
        simd::store(acc, simd::add(simd::load(acc), simd::load(d)));
      } else {
        for (int l = 0; l < blk.n; ++l) grad[bh * n2 + blk.bias[b * L + l]] += d[l];
      }
    }
  }
}

// Logits of query row i's block, biased, softmaxed into w.s (lanes >= n zero).
template <typename F>
void by_mode(Mode mode, F f) {
  if (mode == kPlain) {
    f(std::integral_constant<int, kPlain>{});
  } else if (mode == kPermute) {
    f(std::integral_constant<int, kPermute>{});
  } else {
    f(std::integral_constant<int, kGather>{});
  }
}

// x . keys for query rows i0 .. i0+nr-1 (nr <= kRows) of one block, into out[t], (k*k, L): each
// key row of their windows is read once for all the rows that attend to it.
void logits_shared(const Geometry& g, const float* x, float* keys, int i0, int nr, const Block& blk, float* out) {
  int k = g.k, start[kRows];
  for (int t = 0; t < nr; ++t) start[t] = g.rows.start(i0 + t);  // non-decreasing
  for (int r = start[0]; r < start[nr - 1] + k; ++r) {
    int t0 = 0, t1 = nr;  // the rows whose windows hold key row r: [t0, t1)
    while (start[t0] + k <= r) ++t0;
    while (start[t1 - 1] > r) --t1;
    const float* xs[kRows];
    float* os[kRows];
    for (int t = t0; t < t1; ++t) {
      xs[t - t0] = x + g.row(i0 + t) + blk.j0;
      os[t - t0] = out + (static_cast<long>(t) * k + r - start[t]) * k * L;
    }
    Src src{keys + g.row(r) + blk.j0 - k / 2 + blk.shift, 1, g.Wp, blk.idx.data()};
    by_mode(blk.mode, [&](auto m) { dot_shared<decltype(m)::value>(k, t1 - t0, xs, g.Wp, src, g.D, os); });
  }
}

// Query row i's logits s (from logits_shared), biased and softmaxed in place (lanes >= n zero).
void probabilities(const Geometry& g, const float* rpb, int i, const Block& blk, float* s) {
  if (rpb != nullptr) add_bias(g, rpb, i, blk, s);
  softmax(s, g.k * g.k, blk.n);
}

// out[t] = mul * sum over query row i0+t's window of w[t](a, b) * values(a, b), (D, L), for
// t < nr: each value row is read once for all the rows that attend to it.
void weighted_rows(const Geometry& g, float* values, int i0, int nr, const Block& blk, const float* w, float mul,
                   float* out) {
  int k = g.k, start[kRows];
  for (int t = 0; t < nr; ++t) start[t] = g.rows.start(i0 + t);
  std::fill(out, out + static_cast<long>(nr) * g.D * L, 0.0f);
  for (int r = start[0]; r < start[nr - 1] + k; ++r) {
    int t0 = 0, t1 = nr;
    while (start[t0] + k <= r) ++t0;
    while (start[t1 - 1] > r) --t1;
    const float* ws[kRows];
    float* os[kRows];
    for (int t = t0; t < t1; ++t) {
      ws[t - t0] = w + (static_cast<long>(t) * k + r - start[t]) * k * L;
      os[t - t0] = out + static_cast<long>(t) * g.D * L;
    }
    Src src{values + g.row(r) + blk.j0 - k / 2 + blk.shift, 1, g.Wp, blk.idx.data()};
    by_mode(blk.mode, [&](auto m) { weighted_shared<decltype(m)::value>(t1 - t0, ws, src, k, g.D, os); });
  }
  if (mul != 1.0f)
    for (long e = 0; e < static_cast<long>(nr) * g.D * L; ++e) out[e] *= mul;
}

template <typename T>
void store_lanes(const Geometry& g, const float* acc, int b, int i, const Block& blk, int h, const Map<T>& m) {
  unpack_row(acc, L, blk.n, g.D, m, b, i, blk.j0, h);
}

template <typename T>
void forward_head(const Geometry& g, const Map<T>* qkv, const float* rpb, const Map<T>& out, int b, int h, Scratch& w) {
  pack(qkv[0], b, h, g, g.scale, w.q.data());
  pack(qkv[1], b, h, g, 1.0f, w.k.data());
  pack(qkv[2], b, h, g, 1.0f, w.v.data());
  long kkl = static_cast<long>(g.k) * g.k * L;
  for (int i0 = 0; i0 < g.H; i0 += kRows)
    for (const Block& blk : g.blocks) {
      int nr = std::min(kRows, g.H - i0);
      logits_shared(g, w.q.data(), w.k.data(), i0, nr, blk, w.s.data());
      for (int t = 0; t < nr; ++t) probabilities(g, rpb, i0 + t, blk, w.s.data() + t * kkl);
      weighted_rows(g, w.v.data(), i0, nr, blk, w.s.data(), 1.0f, w.acc.data());
      for (int t = 0; t < nr; ++t) store_lanes(g, w.acc.data() + t * g.D * L, b, i0 + t, blk, h, out);
    }
}

template <typename T>
void prepare_backward(const Geometry& g, const Map<T>* qkv, const Map<T>& gout, const Map<T>& out, int b, int h, Scratch& w) {
  pack(qkv[0], b, h, g, g.scale, w.q.data());
  pack(qkv[1], b, h, g, 1.0f, w.k.data());
  pack(qkv[2], b, h, g, 1.0f, w.v.data());
  pack(gout, b, h, g, 1.0f, w.dout.data());
  pack(out, b, h, g, 1.0f, w.dk.data());  // O, for a moment
  std::fill(w.delta.begin(), w.delta.end(), 0.0f);
  for (int i = 0; i < g.H; ++i) {  // rowsum(dP * P) = rowsum(dO * O), columns in the lanes
    float* d = w.delta.data() + static_cast<long>(i) * g.Wp;
    for (int c = 0; c < g.D; ++c) {
      const float* dout = w.dout.data() + g.row(i) + static_cast<long>(c) * g.Wp;
      const float* o = w.dk.data() + g.row(i) + static_cast<long>(c) * g.Wp;
      for (int j = 0; j < g.W; j += L) simd::store(d + j, simd::fma(simd::load(dout + j), simd::load(o + j), simd::load(d + j)));
    }
  }
  w.dk.zero();
  w.dv.zero();
  for (auto* x : {&w.lanes, &w.bk, &w.bv, &w.pr, &w.sr}) std::fill(x->begin(), x->end(), 0.0f);
}

// One block of query row i, whose logits are in s and dP in dp (logits_shared): P and dS in
// their place; both kept in pr, sr for key_major (interior), or border gradients; the rpb one.
void backward_block(const Geometry& g, const float* rpb, float* grad_rpb, int i, const Block& blk, float* s, float* dp,
                    float* pr, float* sr, Scratch& w) {
  int kk = g.k * g.k;
  probabilities(g, rpb, i, blk, s);
  vf delta = simd::load(w.delta.data() + static_cast<long>(i) * g.Wp + blk.j0);
  for (int t = 0; t < kk; ++t) {  // dS = P * (dP - delta), in place of dP
    float* d = dp + t * L;
    simd::store(d, simd::mul(simd::load(s + t * L), simd::sub(simd::load(d), delta)));
  }
  if (grad_rpb != nullptr) add_bias_grad(g, i, blk, dp, w.lanes.data(), grad_rpb);
  vf mask = simd::load(blk.mask.data());  // the interior lanes' P and dS: for key_major
  for (int t = 0; t < kk; ++t) {
    simd::store(pr + t * w.wr + w.off + blk.j0, simd::mul(mask, simd::load(s + t * L)));
    simd::store(sr + t * w.wr + w.off + blk.j0, simd::mul(mask, simd::load(dp + t * L)));
  }
  const float* x = w.q.data() + g.row(i) + blk.j0;
  const float* xo = w.dout.data() + g.row(i) + blk.j0;
  if (blk.left > 0) {
    border_outer_add(g, w.bk.data(), i, 0, blk.left, dp, x, w.xt.data());
    border_outer_add(g, w.bv.data(), i, 0, blk.left, s, xo, w.xt.data());
  }
  if (blk.right < blk.n) {
    long side = static_cast<long>(g.H) * g.k * g.D;
    border_outer_add(g, w.bk.data() + side, i, blk.right, blk.n, dp, x, w.xt.data());
    border_outer_add(g, w.bv.data() + side, i, blk.right, blk.n, s, xo, w.xt.data());
  }
}

template <typename T>
void backward_head(const Geometry& g, const Map<T>* qkv, const Map<T>& gout, const Map<T>& out, const float* rpb,
                   const Map<T>* grads, float* grad_rpb, int b, int h, Scratch& w) {
  prepare_backward(g, qkv, gout, out, b, h, w);
  long kkl = static_cast<long>(g.k) * g.k * L, kkw = static_cast<long>(g.k) * g.k * w.wr;
  for (int i0 = 0; i0 < g.H; i0 += kRows) {
    int nr = std::min(kRows, g.H - i0);
    for (const Block& blk : g.blocks) {
      logits_shared(g, w.q.data(), w.k.data(), i0, nr, blk, w.s.data());
      logits_shared(g, w.dout.data(), w.v.data(), i0, nr, blk, w.dp.data());  // dP
      for (int t = 0; t < nr; ++t)
        backward_block(g, rpb, grad_rpb, i0 + t, blk, w.s.data() + t * kkl, w.dp.data() + t * kkl,
                       w.pr.data() + t * kkw, w.sr.data() + t * kkw, w);
      weighted_rows(g, w.k.data(), i0, nr, blk, w.dp.data(), g.scale, w.acc.data());  // dQ = scale * dS K
      for (int t = 0; t < nr; ++t) store_lanes(g, w.acc.data() + t * g.D * L, b, i0 + t, blk, h, grads[0]);
    }
    for (int t = 0; t < nr; ++t) {  // q is pre-scaled: dK = scale * dS q
      key_major(g, w.sr.data() + t * kkw + w.off, w.wr, w.q.data() + g.row(i0 + t), w.dk.data(), i0 + t);
      key_major(g, w.pr.data() + t * kkw + w.off, w.wr, w.dout.data() + g.row(i0 + t), w.dv.data(), i0 + t);
    }
  }
  finish_border(g, w.bk.data(), w.dk.data());
  finish_border(g, w.bv.data(), w.dv.data());
  unpack(w.dk.data(), g, b, h, grads[1]);
  unpack(w.dv.data(), g, b, h, grads[2]);
  if (grad_rpb == nullptr) return;
  int k = g.k, n2 = 2 * k - 1;
  for (int bh = 0; bh < n2; ++bh)
    for (int bc = 0; bc < k; ++bc) {
      const float* acc = w.lanes.data() + (bh * k + bc) * L;
      float sum = 0.0f;
      for (int l = 0; l < L; ++l) sum += acc[l];
      grad_rpb[bh * n2 + k / 2 + bc] += sum;
    }
}

template <typename F>
void by_dtype(at::ScalarType t, F f) {
  if (t == at::kFloat) {
    f(float{});
  } else if (t == at::kBFloat16) {
    f(c10::BFloat16{});
  } else if (t == at::kHalf) {
    f(c10::Half{});
  } else {
    TORCH_CHECK(false, "na2d fused kernel: dtype must be float32, bfloat16 or float16, got ", t);
  }
}

const float* rpb_data(const std::optional<at::Tensor>& rpb) {
  if (!rpb.has_value()) return nullptr;
  TORCH_CHECK(rpb->scalar_type() == at::kFloat && rpb->is_contiguous(), "na2d fused kernel: rpb must be contiguous float32");
  return rpb->data_ptr<float>();
}

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->dim() == 5 && t->device().is_cpu() && t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type(),
                "na2d fused kernel: query, key and value must be CPU tensors of one shape (B, H, W, heads, D) and dtype");
  }
}

}  // namespace

at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& rpb,
                   int64_t kernel_size, int64_t dilation, double scale) {
  check(q, k, v);
  std::vector<Geometry> gs = groups(q, kernel_size, dilation, scale);
  const float* bias = rpb_data(rpb);
  int heads = q.size(3), n2 = 2 * kernel_size - 1, d = dilation;
  at::Tensor out = at::empty(q.sizes(), q.options());
  by_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    Map<T> qkv[3] = {map_of<T>(q), map_of<T>(k), map_of<T>(v)}, o = map_of<T>(out);
    at::parallel_for(0, q.size(0) * heads, 1, [&](int64_t begin, int64_t end) {
      Scratch w(gs[0], false);  // group (0, 0) is the largest
      for (int64_t t = begin; t < end; ++t)
        for (const Geometry& g : gs) {
          Map<T> in[3] = {group_of(qkv[0], g, d), group_of(qkv[1], g, d), group_of(qkv[2], g, d)};
          const float* hb = bias == nullptr ? nullptr : bias + t % heads * n2 * n2;
          forward_head<T>(g, in, hb, group_of(o, g, d), t / heads, t % heads, w);
        }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& q,
                                            const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& rpb,
                                            int64_t kernel_size, int64_t dilation, double scale, bool want_rpb) {
  check(q, k, v);
  check(q, grad_out, out);
  std::vector<Geometry> gs = groups(q, kernel_size, dilation, scale);
  const float* bias = rpb_data(rpb);
  TORCH_CHECK(!want_rpb || bias != nullptr, "na2d fused kernel: want_rpb needs rpb");
  int64_t batch = q.size(0), heads = q.size(3), n2 = 2 * kernel_size - 1, d = dilation;
  at::Tensor grad_qkv = at::empty({batch, q.size(1), q.size(2), 3, heads, q.size(4)}, q.options());
  at::Tensor partial = at::zeros({want_rpb ? batch : 0, heads, n2, n2}, q.options().dtype(at::kFloat));
  by_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    Map<T> qkv[3] = {map_of<T>(q), map_of<T>(k), map_of<T>(v)};
    Map<T> grads[3] = {map_of<T>(grad_qkv.select(3, 0)), map_of<T>(grad_qkv.select(3, 1)), map_of<T>(grad_qkv.select(3, 2))};
    Map<T> go = map_of<T>(grad_out), o = map_of<T>(out);
    at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
      Scratch w(gs[0], true);
      for (int64_t t = begin; t < end; ++t)
        for (const Geometry& g : gs) {
          Map<T> in[3] = {group_of(qkv[0], g, d), group_of(qkv[1], g, d), group_of(qkv[2], g, d)};
          Map<T> gr[3] = {group_of(grads[0], g, d), group_of(grads[1], g, d), group_of(grads[2], g, d)};
          const float* hb = bias == nullptr ? nullptr : bias + t % heads * n2 * n2;
          float* grad_rpb = want_rpb ? partial.data_ptr<float>() + t * n2 * n2 : nullptr;
          backward_head<T>(g, in, group_of(go, g, d), group_of(o, g, d), hb, gr, grad_rpb, t / heads, t % heads, w);
        }
    });
  });
  at::Tensor grad_rpb = at::zeros({want_rpb ? heads : 0, n2, n2}, partial.options());
  for (int64_t b = 0; b < (want_rpb ? batch : 0); ++b) grad_rpb.add_(partial[b]);  // in batch order: deterministic
  return {grad_qkv, grad_rpb};
}

}  // namespace na2d

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &na2d::forward, "fused na2d forward: out");
  m.def("backward", &na2d::backward, "fused na2d backward: (grad_qkv packed (B, H, W, 3, heads, D), grad_rpb fp32)");
  m.attr("isa") = simd::kIsa;
  m.attr("lanes") = simd::L;
}
