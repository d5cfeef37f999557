// baf._native: validate at the boundary (ValueError naming the argument), allocate with the GIL,
// compute without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "kernels.hpp"

namespace py = pybind11;

namespace {

[[noreturn]] void fail(const char* name, const std::string& why) {
  throw py::value_error(std::string(name) + ": " + why);
}

py::dtype f16() { return py::dtype("float16"); }

// The array's data after checking dtype, rank, non-empty extents and C order.
template <class T>
const T* checked(const py::array& a, const char* name, py::ssize_t ndim, const py::dtype& want) {
  if (!a.dtype().is(want))
    fail(name, "expected dtype " + std::string(py::str(want)) + ", got " + std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    fail(name, "expected " + std::to_string(ndim) + " dimensions, got " + std::to_string(a.ndim()));
  for (py::ssize_t d = 0; d < ndim; ++d)
    if (a.shape(d) < 1) fail(name, "dimension " + std::to_string(d) + " is empty");
  if (!(a.flags() & py::array::c_style)) fail(name, "must be C-contiguous");
  return static_cast<const T*>(a.data());
}

// bits must be a Python int (not bool) in 1..16.
int checked_bits(const py::object& bits) {
  if (!py::isinstance<py::int_>(bits) || py::isinstance<py::bool_>(bits))
    fail("bits", "expected an int in 1..16, got " + std::string(py::str(py::repr(bits))));
  const long long b = bits.cast<long long>();
  if (b < 1 || b > 16) fail("bits", "expected an int in 1..16, got " + std::to_string(b));
  return static_cast<int>(b);
}

baf::Shape shape_of(const py::array& a) {
  return {static_cast<std::size_t>(a.shape(0)), static_cast<std::size_t>(a.shape(1)),
          static_cast<std::size_t>(a.shape(2))};
}

bool wide(int bits) { return bits > 8; }
py::dtype q_dtype(int bits) { return wide(bits) ? py::dtype::of<std::uint16_t>() : py::dtype::of<std::uint8_t>(); }

// lo and hi: float16 [C] with lo <= hi, both finite.
void check_side_info(const py::array& lo, const py::array& hi, std::size_t channels) {
  const auto* l = checked<std::uint16_t>(lo, "lo", 1, f16());
  const auto* h = checked<std::uint16_t>(hi, "hi", 1, f16());
  if (static_cast<std::size_t>(lo.shape(0)) != channels)
    fail("lo", "expected " + std::to_string(channels) + " values, got " + std::to_string(lo.shape(0)));
  if (static_cast<std::size_t>(hi.shape(0)) != channels)
    fail("hi", "expected " + std::to_string(channels) + " values, got " + std::to_string(hi.shape(0)));
  for (std::size_t c = 0; c < channels; ++c) {
    const float lf = baf::half_to_float(l[c]), hf = baf::half_to_float(h[c]);
    if (!std::isfinite(lf)) fail("lo", "channel " + std::to_string(c) + " is not finite");
    if (!std::isfinite(hf)) fail("hi", "channel " + std::to_string(c) + " is not finite");
    if (!(lf <= hf)) fail("hi", "channel " + std::to_string(c) + " has hi < lo");
  }
}

void raise_for(const baf::Result& r, const char* data_name, int bits) {
  const std::string ch = "channel " + std::to_string(r.channel);
  switch (r.status) {
    case baf::Status::ok:
      return;
    case baf::Status::non_finite:
      fail(data_name, ch + " contains NaN or infinity");
    case baf::Status::fp16_overflow:
      fail(data_name, ch + " exceeds the float16 range of the side info (|value| < 65520)");
    case baf::Status::q_out_of_range:
      fail("q", ch + " has a value above 2**bits - 1 = " + std::to_string((1u << bits) - 1u));
  }
}

template <class Q>
py::tuple quantize_as(const py::array& z, int bits) {
  const float* src = checked<float>(z, "z", 3, py::dtype::of<float>());
  const baf::Shape s = shape_of(z);
  py::array_t<Q> q({s.c, s.h, s.w});
  py::array_t<std::uint16_t> lo(s.c), hi(s.c);  // float16 bits; viewed as float16 on return
  baf::Result r;
  {
    py::gil_scoped_release nogil;
    r = baf::quantize(src, s, bits, q.mutable_data(), lo.mutable_data(), hi.mutable_data());
  }
  raise_for(r, "z", bits);
  return py::make_tuple(q, lo.attr("view")(f16()), hi.attr("view")(f16()));
}

py::tuple quantize(const py::array& z, const py::object& bits_obj) {
  const int bits = checked_bits(bits_obj);
  return wide(bits) ? quantize_as<std::uint16_t>(z, bits) : quantize_as<std::uint8_t>(z, bits);
}

template <class Q>
py::array dequantize_as(const py::array& q, const py::array& lo, const py::array& hi, int bits) {
  const Q* src = checked<Q>(q, "q", 3, q_dtype(bits));
  const baf::Shape s = shape_of(q);
  check_side_info(lo, hi, s.c);
  py::array_t<float> out({s.c, s.h, s.w});
  baf::Result r;
  {
    py::gil_scoped_release nogil;
    r = baf::dequantize(src, s, bits, static_cast<const std::uint16_t*>(lo.data()),
                        static_cast<const std::uint16_t*>(hi.data()), out.mutable_data());
  }
  raise_for(r, "q", bits);
  return out;
}

py::array dequantize(const py::array& q, const py::array& lo, const py::array& hi, const py::object& bits_obj) {
  const int bits = checked_bits(bits_obj);
  return wide(bits) ? dequantize_as<std::uint16_t>(q, lo, hi, bits) : dequantize_as<std::uint8_t>(q, lo, hi, bits);
}

template <class Q>
py::array clamp_as(const py::array& pred, const py::array& q, const py::array& lo, const py::array& hi, int bits) {
  const float* p = checked<float>(pred, "pred", 3, py::dtype::of<float>());
  const Q* k = checked<Q>(q, "q", 3, q_dtype(bits));
  const baf::Shape s = shape_of(q);
  for (py::ssize_t d = 0; d < 3; ++d)
    if (pred.shape(d) != q.shape(d)) fail("pred", "shape differs from q's in dimension " + std::to_string(d));
  check_side_info(lo, hi, s.c);
  py::array_t<float> out({s.c, s.h, s.w});
  baf::Result r;
  {
    py::gil_scoped_release nogil;
    r = baf::clamp_to_bins(p, k, s, bits, static_cast<const std::uint16_t*>(lo.data()),
                           static_cast<const std::uint16_t*>(hi.data()), out.mutable_data());
  }
  raise_for(r, "pred", bits);
  return out;
}

py::array clamp_to_bins(const py::array& pred, const py::array& q, const py::array& lo, const py::array& hi,
                        const py::object& bits_obj) {
  const int bits = checked_bits(bits_obj);
  return wide(bits) ? clamp_as<std::uint16_t>(pred, q, lo, hi, bits) : clamp_as<std::uint8_t>(pred, q, lo, hi, bits);
}

template <class Q>
py::array tile_as(const py::array& q) {
  const Q* src = checked<Q>(q, "q", 3, py::dtype::of<Q>());
  const baf::Grid g = baf::grid_for(shape_of(q));
  py::array_t<Q> image({g.height(), g.width()});
  {
    py::gil_scoped_release nogil;
    baf::tile(src, g, image.mutable_data());
  }
  return image;
}

py::array tile(const py::array& q) {
  if (q.dtype().is(py::dtype::of<std::uint16_t>())) return tile_as<std::uint16_t>(q);
  if (q.dtype().is(py::dtype::of<std::uint8_t>())) return tile_as<std::uint8_t>(q);
  fail("q", "expected dtype uint8 or uint16, got " + std::string(py::str(q.dtype())));
}

std::size_t checked_extent(const py::object& v, const char* name) {
  if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v))
    fail(name, "expected a positive int, got " + std::string(py::str(py::repr(v))));
  const long long n = v.cast<long long>();
  if (n < 1 || n > (1LL << 20)) fail(name, "expected an int in 1..2**20, got " + std::to_string(n));
  return static_cast<std::size_t>(n);
}

template <class Q>
py::array untile_as(const py::array& image, baf::Shape s) {
  const Q* src = checked<Q>(image, "image", 2, py::dtype::of<Q>());
  const baf::Grid g = baf::grid_for(s);
  if (static_cast<std::size_t>(image.shape(0)) != g.height() || static_cast<std::size_t>(image.shape(1)) != g.width())
    fail("image", "expected shape (" + std::to_string(g.height()) + ", " + std::to_string(g.width()) + ") for " +
                      std::to_string(s.c) + " channels of " + std::to_string(s.h) + "x" + std::to_string(s.w) +
                      ", got (" + std::to_string(image.shape(0)) + ", " + std::to_string(image.shape(1)) + ")");
  py::array_t<Q> q({s.c, s.h, s.w});
  {
    py::gil_scoped_release nogil;
    baf::untile(src, g, q.mutable_data());
  }
  return q;
}

py::array untile(const py::array& image, const py::object& channels, const py::object& height,
                 const py::object& width) {
  const baf::Shape s{checked_extent(channels, "channels"), checked_extent(height, "height"),
                     checked_extent(width, "width")};
  if (image.dtype().is(py::dtype::of<std::uint16_t>())) return untile_as<std::uint16_t>(image, s);
  if (image.dtype().is(py::dtype::of<std::uint8_t>())) return untile_as<std::uint8_t>(image, s);
  fail("image", "expected dtype uint8 or uint16, got " + std::string(py::str(image.dtype())));
}

py::tuple grid(const py::object& channels) {
  const baf::Grid g = baf::grid_for({checked_extent(channels, "channels"), 1, 1});
  return py::make_tuple(g.rows, g.cols);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.attr("__name__") = "baf._native";
  m.doc() = "Native BaF kernels: quantize/dequantize (eq. 4-5), tile/untile, clamp_to_bins (eq. 6).";
  m.def("quantize", &quantize, py::arg("z"), py::arg("bits"),
        "Quantize z [C,H,W] float32 per channel to n bits; returns (q, lo, hi) with float16 lo/hi.");
  m.def("dequantize", &dequantize, py::arg("q"), py::arg("lo"), py::arg("hi"), py::arg("bits"),
        "Map q back to float32 with the per-channel float16 lo/hi side info.");
  m.def("clamp_to_bins", &clamp_to_bins, py::arg("pred"), py::arg("q"), py::arg("lo"), py::arg("hi"),
        py::arg("bits"), "Clip each prediction into the quantizer bin of q.");
  m.def("tile", &tile, py::arg("q"), "Lay the C channels of q [C,H,W] out on a grid image.");
  m.def("untile", &untile, py::arg("image"), py::arg("channels"), py::arg("height"), py::arg("width"),
        "Cut a tiled image back into [channels, height, width].");
  m.def("grid", &grid, py::arg("channels"), "The (rows, cols) grid tile() uses for this many channels.");
}
