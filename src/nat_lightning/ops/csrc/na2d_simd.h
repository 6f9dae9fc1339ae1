// A float vector of L lanes for the fused neighborhood-attention kernel (na2d_cpu.cpp).
//
// Built with -march=native: AVX-512 (16 lanes) where the compiler targets it, AVX2 + FMA
// (8 lanes) otherwise, and a plain array of 8 floats on every other CPU (ARM included), which
// the compiler may vectorise on its own. Every function is deterministic.
#pragma once

#include <cmath>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace simd {

#if defined(__AVX512F__)

constexpr int L = 16;
constexpr const char* kIsa = "avx512";
using vf = __m512;
inline vf load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, vf x) { _mm512_storeu_ps(p, x); }
inline vf set1(float x) { return _mm512_set1_ps(x); }
inline vf zero() { return _mm512_setzero_ps(); }
inline vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf div(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf round(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf scale2(vf p, vf n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integral
using vi = __m512i;
inline vi load_index(const int* p) { return _mm512_loadu_si512(p); }
inline vf permute(vf x, vi i) { return _mm512_permutexvar_ps(i, x); }  // lane l: x[i[l]]
inline vf gather(const float* p, vi i) { return _mm512_i32gather_ps(i, p, 4); }  // lane l: p[i[l]]

#elif defined(__AVX2__) && defined(__FMA__)

constexpr int L = 8;
constexpr const char* kIsa = "avx2";
using vf = __m256;
inline vf load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, vf x) { _mm256_storeu_ps(p, x); }
inline vf set1(float x) { return _mm256_set1_ps(x); }
inline vf zero() { return _mm256_setzero_ps(); }
inline vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf div(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf round(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf scale2(vf p, vf n) {  // n >= -126 here (exp clamps its argument)
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
using vi = __m256i;
inline vi load_index(const int* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline vf permute(vf x, vi i) { return _mm256_permutevar8x32_ps(x, i); }
inline vf gather(const float* p, vi i) { return _mm256_i32gather_ps(p, i, 4); }

#else

constexpr int L = 8;
constexpr const char* kIsa = "generic";
struct vf {
  float v[L];
};
#define NAT_LANES(expr)          \
  vf r;                          \
  for (int l = 0; l < L; ++l) {  \
    r.v[l] = (expr);             \
  }                              \
  return r
inline vf load(const float* p) { NAT_LANES(p[l]); }
inline void store(float* p, vf x) {
  for (int l = 0; l < L; ++l) p[l] = x.v[l];
}
inline vf set1(float x) { NAT_LANES(x); }
inline vf zero() { NAT_LANES(0.0f); }
inline vf fma(vf a, vf b, vf c) { NAT_LANES(std::fma(a.v[l], b.v[l], c.v[l])); }
inline vf add(vf a, vf b) { NAT_LANES(a.v[l] + b.v[l]); }
inline vf sub(vf a, vf b) { NAT_LANES(a.v[l] - b.v[l]); }
inline vf mul(vf a, vf b) { NAT_LANES(a.v[l] * b.v[l]); }
inline vf div(vf a, vf b) { NAT_LANES(a.v[l] / b.v[l]); }
inline vf max(vf a, vf b) { NAT_LANES(a.v[l] > b.v[l] ? a.v[l] : b.v[l]); }
inline vf round(vf x) { NAT_LANES(std::nearbyint(x.v[l])); }
inline vf scale2(vf p, vf n) { NAT_LANES(std::ldexp(p.v[l], static_cast<int>(n.v[l]))); }
struct vi {
  int v[L];
};
inline vi load_index(const int* p) {
  vi r;
  for (int l = 0; l < L; ++l) r.v[l] = p[l];
  return r;
}
inline vf permute(vf x, vi i) { NAT_LANES(x.v[i.v[l]]); }
inline vf gather(const float* p, vi i) { NAT_LANES(p[i.v[l]]); }
#undef NAT_LANES

#endif

// exp(x) for x <= 0 (softmax after subtracting the maximum): Cephes' expf, about 1 ulp.
// Arguments below -87 give exp(-87) ~ 1.6e-38 instead of a smaller number or zero.
inline vf exp(vf x) {
  x = max(x, set1(-87.0f));
  vf n = round(mul(x, set1(1.44269504088896341f)));
  vf r = fma(n, set1(-0.693359375f), x);
  r = fma(n, set1(2.12194440e-4f), r);
  vf p = set1(1.9875691500e-4f);
  p = fma(p, r, set1(1.3981999507e-3f));
  p = fma(p, r, set1(8.3334519073e-3f));
  p = fma(p, r, set1(4.1665795894e-2f));
  p = fma(p, r, set1(1.6666665459e-1f));
  p = fma(p, r, set1(5.0000001201e-1f));
  p = fma(p, mul(r, r), add(r, set1(1.0f)));
  return scale2(p, n);
}

// dst[c*ds + r] = mul * src[r*ss + c] for r < rows, c < cols: 8x8 register transposes where
// AVX is there, plain loops for the edges and elsewhere.
inline void copy_transposed(const float* src, long ss, int rows, int cols, float* dst, long ds, float mul) {
  int r0 = 0, c0 = 0;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  const __m256 m = _mm256_set1_ps(mul);
  for (; r0 + 8 <= rows; r0 += 8) {
    for (c0 = 0; c0 + 8 <= cols; c0 += 8) {
      __m256 r[8], t[8], u[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (r0 + i) * ss + c0);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (c0 + i) * ds + r0, _mm256_mul_ps(m, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20)));
        _mm256_storeu_ps(dst + (c0 + i + 4) * ds + r0, _mm256_mul_ps(m, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31)));
      }
    }
    for (int c = c0; c < cols; ++c)
      for (int i = r0; i < r0 + 8; ++i) dst[c * ds + i] = mul * src[i * ss + c];
  }
#endif
  for (int r = r0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[c * ds + r] = mul * src[r * ss + c];
}

}  // namespace simd
