// Bindings of the whole-feature operations of ops/ops.h.
#include "common.h"
#include "module.h"
#include "ops.h"
#include "threadpool.h"

namespace sparsr {

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
}

}  // namespace sparsr
