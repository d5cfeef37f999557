// Channel tiling for the image codec (paper section 3.2), generalised to any C by zero-filled cells.
#include "kernels.hpp"

namespace baf {

Grid grid_for(Shape s) {
  std::size_t log2c = 0;  // ceil(log2(C))
  while ((std::size_t{1} << log2c) < s.c) ++log2c;
  const std::size_t cols = std::size_t{1} << ((log2c + 1) / 2);
  return Grid{s, (s.c + cols - 1) / cols, cols};
}

// Single-threaded on purpose: a pure copy is bound by memory, and extra threads only cost when the
// cores are busy with the model (measured: 2 threads took 2x longer on a loaded 2-core machine).
template <class Q>
void tile(const Q* q, Grid g, Q* image) {
  const std::size_t h = g.s.h, w = g.s.w, row_len = g.width();
  for (std::size_t c = 0; c < g.rows * g.cols; ++c) {
    Q* cell = image + (c / g.cols) * h * row_len + (c % g.cols) * w;
    if (c >= g.s.c) {  // a grid cell past the last channel is zero
      for (std::size_t y = 0; y < h; ++y) std::memset(cell + y * row_len, 0, w * sizeof(Q));
      continue;
    }
    const Q* src = q + c * h * w;
    for (std::size_t y = 0; y < h; ++y) std::memcpy(cell + y * row_len, src + y * w, w * sizeof(Q));
  }
}

template <class Q>
void untile(const Q* image, Grid g, Q* q) {
  const std::size_t h = g.s.h, w = g.s.w, row_len = g.width();
  for (std::size_t c = 0; c < g.s.c; ++c) {
    const Q* cell = image + (c / g.cols) * h * row_len + (c % g.cols) * w;
    Q* dst = q + c * h * w;
    for (std::size_t y = 0; y < h; ++y) std::memcpy(dst + y * w, cell + y * row_len, w * sizeof(Q));
  }
}

template void tile<std::uint8_t>(const std::uint8_t*, Grid, std::uint8_t*);
template void tile<std::uint16_t>(const std::uint16_t*, Grid, std::uint16_t*);
template void untile<std::uint8_t>(const std::uint8_t*, Grid, std::uint8_t*);
template void untile<std::uint16_t>(const std::uint16_t*, Grid, std::uint16_t*);

}  // namespace baf
