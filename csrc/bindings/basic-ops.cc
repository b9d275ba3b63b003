// Bindings of the whole-feature operations (ops/ops.h) and the image <-> feature
// conversions.
#include "common.h"
#include "module.h"
#include "ops.h"
#include "threadpool.h"

namespace sparsr {
namespace {

// uint8 (h, w, 3) -> 3 channel planes of matrix @ rgb + bias.
std::shared_ptr<Feature> image_to_feature(const ByteArray& img, const FloatArray& matrix,
                                          const FloatArray& bias) {
  if (img.ndim() != 3 || img.shape(2) != 3)
    throw std::invalid_argument("expected an (height, width, 3) uint8 image");
  if (matrix.size() != 9 || bias.size() != 3)
    throw std::invalid_argument("expected a 3x3 matrix and 3 biases");
  const int h = static_cast<int>(img.shape(0)), w = static_cast<int>(img.shape(1));
  auto f = std::make_shared<Feature>(3, h, w);
  const uint8_t* p = img.data();
  const float* m = matrix.data();
  const float* b = bias.data();
  {
    py::gil_scoped_release release;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const uint8_t* px = p + (static_cast<size_t>(y) * w + x) * 3;
        for (int c = 0; c < 3; ++c)
          f->at(c, y, x) = m[c * 3] * px[0] + m[c * 3 + 1] * px[1] + m[c * 3 + 2] * px[2] + b[c];
      }
  }
  return f;
}

// (3 s^2, h, w) tail + (3, s h, s w) base -> float (s h, s w, 3) image:
// matrix @ (pixel_shuffle(tail) + base) + bias.
py::array_t<float> compose_image(const Channels& tail, const Channels& base, int scale,
                                 const FloatArray& matrix, const FloatArray& bias) {
  if (tail.size() != 3 * scale * scale || base.size() != 3 || base.height != tail.height * scale ||
      base.width != tail.width * scale)
    throw std::invalid_argument("compose_image: tail and base sizes do not match the scale");
  const int H = base.height, W = base.width;
  py::array_t<float> out({H, W, 3});
  float* o = out.mutable_data();
  const float* m = matrix.data();
  const float* b = bias.data();
  {
    py::gil_scoped_release release;
    parallel_for(H, [&](size_t Y) {
      const int y = static_cast<int>(Y) / scale, dy = static_cast<int>(Y) % scale;
      for (int X = 0; X < W; ++X) {
        const int x = X / scale, dx = X % scale;
        float v[3];
        for (int c = 0; c < 3; ++c) {
          const float* t = tail.planes[(c * scale + dy) * scale + dx];
          v[c] = t[(y + 1) * tail.ld + x + 1] + base.planes[c][(Y + 1) * base.ld + X + 1];
        }
        float* px = o + (Y * static_cast<size_t>(W) + X) * 3;
        for (int c = 0; c < 3; ++c)
          px[c] = m[c * 3] * v[0] + m[c * 3 + 1] * v[1] + m[c * 3 + 2] * v[2] + b[c];
      }
    });
  }
  return out;
}

}  // namespace

SPARSR_BINDINGS(10) {
  m.def("fill", [](const Channels& out, const PixelSet& pixels, float value) {
    py::gil_scoped_release release;
    fill(out, pixels, value);
  }, py::arg("output"), py::arg("pixels"), py::arg("value") = 0.0f);
  m.def("scale_add", [](const Channels& src, const std::vector<float>& scale,
                        const Channels& residual, const Channels& dst) {
    py::gil_scoped_release release;
    scale_add(src, scale, residual, dst);
  }, py::arg("src"), py::arg("scale"), py::arg("residual"), py::arg("dst"));
  m.def("relu_inplace", [](const Channels& x) {
    py::gil_scoped_release release;
    relu_inplace(x);
  }, py::arg("x"));
  m.def("channel_means", [](const Channels& src) {
    py::gil_scoped_release release;
    return channel_means(src);
  }, py::arg("src"));
  m.def("avg_pool2", [](const Channels& src, const Channels& dst) {
    py::gil_scoped_release release;
    avg_pool2(src, dst);
  }, py::arg("src"), py::arg("dst"));
  m.def("conv_transpose3x3_s2", [](const Channels& src, const FloatArray& weight,
                                   const FloatArray& bias, const Channels& dst) {
    if (weight.ndim() != 4 || weight.shape(0) != src.size() || weight.shape(2) != 3 ||
        weight.shape(3) != 3)
      throw std::invalid_argument("weight must be (cin, cout, 3, 3)");
    const int cout = static_cast<int>(weight.shape(1));
    if (bias.size() != cout) throw std::invalid_argument("bias must have cout values");
    py::gil_scoped_release release;
    conv_transpose3x3_s2(src, weight.data(), bias.data(), cout, dst);
  }, py::arg("src"), py::arg("weight"), py::arg("bias"), py::arg("dst"));
  m.def("upsample_bicubic", [](const Channels& src, int scale, const Channels& dst) {
    py::gil_scoped_release release;
    upsample_bicubic(src, scale, dst);
  }, py::arg("src"), py::arg("scale"), py::arg("dst"));
  m.def("image_to_feature", &image_to_feature, py::arg("image"), py::arg("matrix"), py::arg("bias"));
  m.def("compose_image", &compose_image, py::arg("tail"), py::arg("base"), py::arg("scale"),
        py::arg("matrix"), py::arg("bias"));
}

}  // namespace sparsr
