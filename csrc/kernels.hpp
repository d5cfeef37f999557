// Plain C++17 BaF kernels (paper eq. 4-6 and tiling); no Python headers here.
// Numeric contract: docs/architecture.md, "Numeric contract of the kernels".
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace baf {

// A [C, H, W] tensor's extents.
struct Shape {
  std::size_t c, h, w;
  std::size_t plane() const { return h * w; }
  std::size_t size() const { return c * h * w; }
};

// Where C channels of H x W go in the tiled image: `cols` = 2^ceil(log2(C)/2), `rows` = ceil(C/cols).
struct Grid {
  Shape s;
  std::size_t rows, cols;
  std::size_t height() const { return rows * s.h; }
  std::size_t width() const { return cols * s.w; }
};
Grid grid_for(Shape s);

// IEEE binary16 conversions; float_to_half rounds to nearest, ties to even (as numpy's astype(float16)).
std::uint16_t float_to_half(float f);
float half_to_float(std::uint16_t h);

// Outcome of a kernel that validates data as it reads it; `channel` is the first bad one.
enum class Status { ok, non_finite, fp16_overflow, q_out_of_range };
struct Result {
  Status status = Status::ok;
  std::size_t channel = 0;
};

// Eq. 4: per channel lo/hi = min/max rounded to fp16 (as fp16 bits), q = clip(round((z-lo)/(hi-lo)*(2^n-1))).
template <class Q>
Result quantize(const float* z, Shape s, int bits, Q* q, std::uint16_t* lo, std::uint16_t* hi);

// Eq. 5: z_hat = q/(2^n-1)*(hi-lo)+lo. Fails with q_out_of_range if some q > 2^n-1.
template <class Q>
Result dequantize(const Q* q, Shape s, int bits, const std::uint16_t* lo, const std::uint16_t* hi, float* out);

// Eq. 6: clip each prediction into the quantizer bin of its transmitted q.
template <class Q>
Result clamp_to_bins(const float* pred, const Q* q, Shape s, int bits, const std::uint16_t* lo,
                     const std::uint16_t* hi, float* out);

template <class Q>
void tile(const Q* q, Grid g, Q* image);
template <class Q>
void untile(const Q* image, Grid g, Q* q);

// Runs fn(begin, end) over [0, n) split across hardware threads, but only when the work
// (n * cost_per_item element-operations) is large enough to repay starting threads.
template <class F>
void parallel_for(std::size_t n, std::size_t cost_per_item, F fn) {
  constexpr std::size_t kMinWorkPerThread = std::size_t{1} << 19;
  const std::size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t want = (n * cost_per_item) / kMinWorkPerThread;
  const std::size_t threads = std::min({hw, n, std::max<std::size_t>(want, 1)});
  if (threads <= 1) {
    fn(std::size_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const std::size_t chunk = (n + threads - 1) / threads;
  for (std::size_t t = 1; t < threads; ++t) {
    const std::size_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back(fn, b, e);
  }
  fn(std::size_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
}

// Folds per-channel results from parallel chunks: the lowest failing channel wins.
class ResultSink {
 public:
  explicit ResultSink(std::size_t channels) : per_channel_(channels) {}
  void set(std::size_t c, Status st) { per_channel_[c] = st; }
  Result first() const {
    for (std::size_t c = 0; c < per_channel_.size(); ++c)
      if (per_channel_[c] != Status::ok) return {per_channel_[c], c};
    return {};
  }

 private:
  std::vector<Status> per_channel_;
};

}  // namespace baf
