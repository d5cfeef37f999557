// Eq. 6: keep a BaF prediction where it agrees with the transmitted quantizer bin, else the nearest bin edge.
#include "kernels.hpp"
#include "simd.hpp"

namespace baf {
namespace {

struct PlaneCheck {
  bool non_finite;
  std::uint32_t top_q;
};

// out = min(max(pred, lower(q)), upper(q)) with the bin edges of the NumPy reference, same float32 order.
// A plain loop: the auto-vectoriser widens q and blends better than vector-extension code does.
template <class Q>
inline __attribute__((always_inline)) PlaneCheck clamp_plane(const float* pred, const Q* q, std::size_t n, float l,
                                                             float step, float maxq, float* __restrict out) {
  Q top = 0;
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float k = static_cast<float>(q[i]);
    const float below = k - 0.5f, above = k + 0.5f;
    const float lower = l + (below < 0.0f ? 0.0f : below) * step;
    const float upper = l + (above > maxq ? maxq : above) * step;
    float p = pred[i];
    std::uint32_t u;
    std::memcpy(&u, &p, 4);
    bad |= (u & 0x7f800000u) == 0x7f800000u;  // NaN or infinity
    p = p < lower ? lower : p;
    p = p > upper ? upper : p;
    out[i] = p;
    top = q[i] > top ? q[i] : top;
  }
  return PlaneCheck{bad != 0, top};
}

BAF_SIMD_CLONES PlaneCheck clamp_plane_u8(const float* pred, const std::uint8_t* q, std::size_t n, float l,
                                          float step, float maxq, float* out) {
  return clamp_plane(pred, q, n, l, step, maxq, out);
}
BAF_SIMD_CLONES PlaneCheck clamp_plane_u16(const float* pred, const std::uint16_t* q, std::size_t n, float l,
                                           float step, float maxq, float* out) {
  return clamp_plane(pred, q, n, l, step, maxq, out);
}
PlaneCheck clamp_plane_any(const float* pred, const std::uint8_t* q, std::size_t n, float l, float step, float maxq,
                           float* out) {
  return clamp_plane_u8(pred, q, n, l, step, maxq, out);
}
PlaneCheck clamp_plane_any(const float* pred, const std::uint16_t* q, std::size_t n, float l, float step, float maxq,
                           float* out) {
  return clamp_plane_u16(pred, q, n, l, step, maxq, out);
}

}  // namespace

template <class Q>
Result clamp_to_bins(const float* pred, const Q* q, Shape s, int bits, const std::uint16_t* lo,
                     const std::uint16_t* hi, float* out) {
  const std::uint32_t maxq_int = (1u << bits) - 1u;
  const float maxq = static_cast<float>(maxq_int);
  const std::size_t plane = s.plane();
  ResultSink sink(s.c);
  parallel_for(s.c, 2 * plane, [&](std::size_t begin, std::size_t end) {
    for (std::size_t c = begin; c < end; ++c) {
      const float l = half_to_float(lo[c]);
      const float step = (half_to_float(hi[c]) - l) / maxq;
      const PlaneCheck check =
          clamp_plane_any(pred + c * plane, q + c * plane, plane, l, step, maxq, out + c * plane);
      if (check.non_finite) {
        sink.set(c, Status::non_finite);
      } else if (check.top_q > maxq_int) {
        sink.set(c, Status::q_out_of_range);
      }
    }
  });
  return sink.first();
}

template Result clamp_to_bins<std::uint8_t>(const float*, const std::uint8_t*, Shape, int, const std::uint16_t*,
                                            const std::uint16_t*, float*);
template Result clamp_to_bins<std::uint16_t>(const float*, const std::uint16_t*, Shape, int, const std::uint16_t*,
                                             const std::uint16_t*, float*);

}  // namespace baf
