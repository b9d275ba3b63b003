// Bindings of the elementwise operators (ops/elementwise.h): activations,
// add/sub/mul and per-channel statistics, all on Channels.
#include "common.h"
#include "elementwise.h"
#include "module.h"

namespace sparsr {
namespace {

std::vector<float> to_vector(const FloatArray& a) { return {a.data(), a.data() + a.size()}; }

}  // namespace

SPARSR_BINDINGS(20) {
  m.def("unary", [](const std::string& kind, const Channels& src, const Channels& dst,
                    float alpha, float beta, const py::object& slopes, const py::object& isa) {
    const UnaryKind k = unary_kind_from_name(kind);
    std::vector<float> s;
    if (!slopes.is_none()) s = to_vector(py::cast<FloatArray>(slopes));
    if (k == UnaryKind::kPrelu && s.empty())
      throw std::invalid_argument("prelu needs its slopes");
    const Isa level = isa_arg(isa);
    py::gil_scoped_release release;
    unary(k, src, dst, alpha, beta, s, level);
  }, py::arg("kind"), py::arg("src"), py::arg("dst"), py::arg("alpha") = 0.0f,
     py::arg("beta") = 0.0f, py::arg("slopes") = py::none(), py::arg("isa") = py::none(),
     "dst = kind(src) over the interior; dst may be src. kind: relu, leaky_relu (alpha: the "
     "slope), prelu (slopes: one per channel, or one), sigmoid, silu, gelu (erf form), "
     "gelu_tanh (PyTorch's approximate='tanh'), tanh, clamp (min(max(x, alpha), beta); "
     "+-inf for a missing bound). isa: 'scalar', 'avx2', 'avx512', lowered to the active "
     "level; None: the active one.");
  m.def("binary", [](const std::string& kind, const Channels& a, const Channels& b,
                     const Channels& dst, const py::object& isa) {
    const BinaryKind k = binary_kind_from_name(kind);
    const Isa level = isa_arg(isa);
    py::gil_scoped_release release;
    binary(k, a, b, dst, level);
  }, py::arg("kind"), py::arg("a"), py::arg("b"), py::arg("dst"), py::arg("isa") = py::none(),
     "dst = a kind b, kind add, sub or mul. a and b have dst's shape, or one of them is a "
     "(C, 1, 1) or (1, 1, 1) broadcast; dst may be a or b.");
  m.def("binary_const", [](const std::string& kind, const Channels& a, const FloatArray& values,
                           const Channels& dst, bool reverse, const py::object& isa) {
    const BinaryKind k = binary_kind_from_name(kind);
    const std::vector<float> v = to_vector(values);
    const Isa level = isa_arg(isa);
    py::gil_scoped_release release;
    binary_const(k, a, v, reverse, dst, level);
  }, py::arg("kind"), py::arg("a"), py::arg("values"), py::arg("dst"),
     py::arg("reverse") = false, py::arg("isa") = py::none(),
     "dst[c] = a[c] kind values[c] (reverse: values[c] kind a[c]); values: a float, or one "
     "value per channel; dst may be a.");
  m.def("global_stats", [](const Channels& src, const Channels* mean, const Channels* std,
                           const py::object& isa) {
    const Isa level = isa_arg(isa);
    py::gil_scoped_release release;
    global_stats(src, mean, std, level);
  }, py::arg("src"), py::arg("mean") = nullptr, py::arg("std") = nullptr,
     py::arg("isa") = py::none(),
     "Writes the per-channel mean and population standard deviation of src (accumulated in "
     "double) to the (C, 1, 1) Channels given as mean and std (either may be None).");
}

}  // namespace sparsr
