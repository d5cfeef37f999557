// Eq. 4 (quantize) and eq. 5 (dequantize), one channel at a time so the second pass reads from cache.
#include "kernels.hpp"
#include "simd.hpp"

namespace baf {
namespace {

using simd::kLanes;
using simd::vf;
using simd::vi;

bool is_non_finite(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7f800000u) == 0x7f800000u;
}

bool is_fp16_inf(std::uint16_t h) { return (h & 0x7fffu) == 0x7c00u; }

// Min and max of x[0..n); false if any element is NaN or infinite.
BAF_SIMD_CLONES bool min_max(const float* x, std::size_t n, float* lo, float* hi) {
  float mn = x[0], mx = x[0];
  bool bad = false;
  std::size_t i = 0;
  if (n >= kLanes) {
    vf vmn = simd::load<vf>(x), vmx = vmn;
    vi vbad = {};
    for (; i + kLanes <= n; i += kLanes) {
      const vf v = simd::load<vf>(x + i);
      vmn = v < vmn ? v : vmn;
      vmx = v > vmx ? v : vmx;
      vbad |= simd::non_finite(v);
    }
    for (int k = 0; k < kLanes; ++k) {
      mn = vmn[k] < mn ? vmn[k] : mn;
      mx = vmx[k] > mx ? vmx[k] : mx;
      bad |= vbad[k] != 0;
    }
  }
  for (; i < n; ++i) {
    mn = x[i] < mn ? x[i] : mn;
    mx = x[i] > mx ? x[i] : mx;
    bad |= is_non_finite(x[i]);
  }
  *lo = mn;
  *hi = mx;
  return !bad;
}

// q = clip(round((z - l) / range * maxq), 0, maxq), same float32 operations as the NumPy reference.
template <class Q>
inline __attribute__((always_inline)) void quantize_plane(const float* z, std::size_t n, float l, float range,
                                                          float maxq, Q* q) {
  const vf vl = simd::splat(l), vrange = simd::splat(range), vmaxq = simd::splat(maxq), zero = {};
  const vf magic = simd::splat(8388608.0f);  // (v + 2^23) - 2^23 rounds half to even for 0 <= v < 2^23
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    vf v = (simd::load<vf>(z + i) - vl) / vrange * vmaxq;
    v = v < zero ? zero : v;
    v = v > vmaxq ? vmaxq : v;
    v = (v + magic) - magic;
    simd::store(q + i, __builtin_convertvector(__builtin_convertvector(v, vi), simd::vec<Q>));
  }
  for (; i < n; ++i) {
    float v = (z[i] - l) / range * maxq;
    v = v < 0.0f ? 0.0f : v;
    v = v > maxq ? maxq : v;
    v = (v + 8388608.0f) - 8388608.0f;
    q[i] = static_cast<Q>(static_cast<std::int32_t>(v));
  }
}

BAF_SIMD_CLONES void quantize_plane_u8(const float* z, std::size_t n, float l, float range, float maxq,
                                       std::uint8_t* q) {
  quantize_plane(z, n, l, range, maxq, q);
}
BAF_SIMD_CLONES void quantize_plane_u16(const float* z, std::size_t n, float l, float range, float maxq,
                                        std::uint16_t* q) {
  quantize_plane(z, n, l, range, maxq, q);
}
void quantize_plane_any(const float* z, std::size_t n, float l, float range, float maxq, std::uint8_t* q) {
  quantize_plane_u8(z, n, l, range, maxq, q);
}
void quantize_plane_any(const float* z, std::size_t n, float l, float range, float maxq, std::uint16_t* q) {
  quantize_plane_u16(z, n, l, range, maxq, q);
}

// out = q * step + l, step = (hi - lo) / maxq: the bin centres whose edges clamp_to_bins uses.
// Returns the largest q seen. A plain loop: the auto-vectoriser widens uint8/uint16 to float far
// better than vector-extension conversions do.
template <class Q>
inline __attribute__((always_inline)) Q dequantize_plane(const Q* q, std::size_t n, float l, float step,
                                                         float* __restrict out) {
  Q top = 0;
  for (std::size_t i = 0; i < n; ++i) {
    top = q[i] > top ? q[i] : top;
    out[i] = static_cast<float>(q[i]) * step + l;
  }
  return top;
}

BAF_SIMD_CLONES std::uint8_t dequantize_plane_u8(const std::uint8_t* q, std::size_t n, float l, float step,
                                                 float* out) {
  return dequantize_plane(q, n, l, step, out);
}
BAF_SIMD_CLONES std::uint16_t dequantize_plane_u16(const std::uint16_t* q, std::size_t n, float l, float step,
                                                   float* out) {
  return dequantize_plane(q, n, l, step, out);
}
std::uint8_t dequantize_plane_any(const std::uint8_t* q, std::size_t n, float l, float step, float* out) {
  return dequantize_plane_u8(q, n, l, step, out);
}
std::uint16_t dequantize_plane_any(const std::uint16_t* q, std::size_t n, float l, float step, float* out) {
  return dequantize_plane_u16(q, n, l, step, out);
}

}  // namespace

template <class Q>
Result quantize(const float* z, Shape s, int bits, Q* q, std::uint16_t* lo, std::uint16_t* hi) {
  const float maxq = static_cast<float>((1u << bits) - 1u);
  const std::size_t plane = s.plane();
  ResultSink sink(s.c);
  parallel_for(s.c, plane, [&](std::size_t begin, std::size_t end) {
    for (std::size_t c = begin; c < end; ++c) {
      const float* zc = z + c * plane;
      Q* qc = q + c * plane;
      float mn, mx;
      if (!min_max(zc, plane, &mn, &mx)) {
        sink.set(c, Status::non_finite);
        continue;
      }
      lo[c] = float_to_half(mn);
      hi[c] = float_to_half(mx);
      if (is_fp16_inf(lo[c]) || is_fp16_inf(hi[c])) {
        sink.set(c, Status::fp16_overflow);
        continue;
      }
      const float l = half_to_float(lo[c]);
      const float range = half_to_float(hi[c]) - l;
      if (range == 0.0f) {  // constant channel (after fp16 rounding): every value is lo
        std::memset(qc, 0, plane * sizeof(Q));
        continue;
      }
      quantize_plane_any(zc, plane, l, range, maxq, qc);
    }
  });
  return sink.first();
}

template <class Q>
Result dequantize(const Q* q, Shape s, int bits, const std::uint16_t* lo, const std::uint16_t* hi, float* out) {
  const std::uint32_t maxq_int = (1u << bits) - 1u;
  const std::size_t plane = s.plane();
  ResultSink sink(s.c);
  parallel_for(s.c, plane, [&](std::size_t begin, std::size_t end) {
    for (std::size_t c = begin; c < end; ++c) {
      const float l = half_to_float(lo[c]);
      const float step = (half_to_float(hi[c]) - l) / static_cast<float>(maxq_int);
      const Q top = dequantize_plane_any(q + c * plane, plane, l, step, out + c * plane);
      if (top > maxq_int) sink.set(c, Status::q_out_of_range);
    }
  });
  return sink.first();
}

template Result quantize<std::uint8_t>(const float*, Shape, int, std::uint8_t*, std::uint16_t*, std::uint16_t*);
template Result quantize<std::uint16_t>(const float*, Shape, int, std::uint16_t*, std::uint16_t*, std::uint16_t*);
template Result dequantize<std::uint8_t>(const std::uint8_t*, Shape, int, const std::uint16_t*, const std::uint16_t*,
                                         float*);
template Result dequantize<std::uint16_t>(const std::uint16_t*, Shape, int, const std::uint16_t*,
                                          const std::uint16_t*, float*);

}  // namespace baf
