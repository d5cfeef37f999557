// Eq. 6: keep a BaF prediction where it agrees with the transmitted quantizer bin, else the nearest bin edge.
#include "kernels.hpp"

namespace baf {

template <class Q>
Result clamp_to_bins(const float* pred, const Q* q, Shape s, int bits, const std::uint16_t* lo,
                     const std::uint16_t* hi, float* out) {
  const std::uint32_t maxq_int = (1u << bits) - 1u;
  const float maxq = static_cast<float>(maxq_int);
  const std::size_t plane = s.plane();
  ResultSink sink(s.c);
  parallel_for(s.c, plane, [&](std::size_t begin, std::size_t end) {
    for (std::size_t c = begin; c < end; ++c) {
      const float* pc = pred + c * plane;
      const Q* qc = q + c * plane;
      float* oc = out + c * plane;
      const float l = half_to_float(lo[c]);
      const float step = (half_to_float(hi[c]) - l) / maxq;
      Q top = 0;
      std::uint32_t bad = 0;
      for (std::size_t i = 0; i < plane; ++i) {
        const float k = static_cast<float>(qc[i]);
        const float below = k - 0.5f, above = k + 0.5f;
        const float lower = l + (below < 0.0f ? 0.0f : below) * step;
        const float upper = l + (above > maxq ? maxq : above) * step;
        float p = pc[i];
        std::uint32_t u;
        std::memcpy(&u, &p, 4);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
        p = p < lower ? lower : p;
        p = p > upper ? upper : p;
        oc[i] = p;
        top = qc[i] > top ? qc[i] : top;
      }
      if (bad) {
        sink.set(c, Status::non_finite);
      } else if (top > maxq_int) {
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
