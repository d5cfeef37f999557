// Eq. 4 (quantize) and eq. 5 (dequantize), one channel at a time so the second pass reads from cache.
#include "kernels.hpp"

namespace baf {
namespace {

constexpr int kLanes = 8;  // independent accumulators the compiler turns into vector registers

bool is_non_finite(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7f800000u) == 0x7f800000u;
}

// Min and max of x[0..n); false if any element is NaN or infinite.
bool min_max(const float* x, std::size_t n, float* lo, float* hi) {
  float mn[kLanes], mx[kLanes];
  std::uint32_t bad[kLanes];
  for (int k = 0; k < kLanes; ++k) mn[k] = mx[k] = x[0], bad[k] = 0;
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float v = x[i + k];
      mn[k] = v < mn[k] ? v : mn[k];
      mx[k] = v > mx[k] ? v : mx[k];
      bad[k] |= is_non_finite(v);
    }
  }
  for (; i < n; ++i) {
    mn[0] = x[i] < mn[0] ? x[i] : mn[0];
    mx[0] = x[i] > mx[0] ? x[i] : mx[0];
    bad[0] |= is_non_finite(x[i]);
  }
  std::uint32_t any_bad = 0;
  for (int k = 0; k < kLanes; ++k) {
    mn[0] = mn[k] < mn[0] ? mn[k] : mn[0];
    mx[0] = mx[k] > mx[0] ? mx[k] : mx[0];
    any_bad |= bad[k];
  }
  *lo = mn[0];
  *hi = mx[0];
  return any_bad == 0;
}

bool is_fp16_inf(std::uint16_t h) { return (h & 0x7fffu) == 0x7c00u; }

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
      for (std::size_t i = 0; i < plane; ++i) {
        float v = (zc[i] - l) / range * maxq;
        v = v < 0.0f ? 0.0f : v;
        v = v > maxq ? maxq : v;
        v = (v + 8388608.0f) - 8388608.0f;  // round half to even, exact for 0 <= v < 2^23
        qc[i] = static_cast<Q>(static_cast<std::int32_t>(v));
      }
    }
  });
  return sink.first();
}

template <class Q>
Result dequantize(const Q* q, Shape s, int bits, const std::uint16_t* lo, const std::uint16_t* hi, float* out) {
  const std::uint32_t maxq_int = (1u << bits) - 1u;
  const float maxq = static_cast<float>(maxq_int);
  const std::size_t plane = s.plane();
  ResultSink sink(s.c);
  parallel_for(s.c, plane, [&](std::size_t begin, std::size_t end) {
    for (std::size_t c = begin; c < end; ++c) {
      const Q* qc = q + c * plane;
      float* oc = out + c * plane;
      const float l = half_to_float(lo[c]);
      const float range = half_to_float(hi[c]) - l;
      Q top = 0;
      for (std::size_t i = 0; i < plane; ++i) {
        top = qc[i] > top ? qc[i] : top;
        oc[i] = static_cast<float>(qc[i]) / maxq * range + l;
      }
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
