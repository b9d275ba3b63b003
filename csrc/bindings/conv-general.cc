// Bindings of the general and transposed convolutions and of pooling
// (ops/conv-general.h, ops/pool.h).
#include "common.h"
#include "conv-general.h"
#include "module.h"
#include "pool.h"

namespace sparsr {
namespace {

// An int or a pair (height, width).
std::pair<int, int> pair_arg(const py::handle& value, const char* name) {
  if (py::isinstance<py::int_>(value)) {
    const int v = value.cast<int>();
    return {v, v};
  }
  std::vector<int> v;
  try {
    v = value.cast<std::vector<int>>();
  } catch (const py::cast_error&) {
  }
  if (v.size() != 2)
    throw std::invalid_argument(std::string(name) + " must be an int or a pair of ints");
  return {v[0], v[1]};
}

Window2d window_of(int kh, int kw, const py::handle& stride, const py::handle& padding,
                   const py::handle& dilation) {
  Window2d k;
  k.kh = kh;
  k.kw = kw;
  std::tie(k.sh, k.sw) = pair_arg(stride, "stride");
  std::tie(k.ph, k.pw) = pair_arg(padding, "padding");
  if (!dilation.is_none()) std::tie(k.dh, k.dw) = pair_arg(dilation, "dilation");
  return k;
}

// A 4-D float32 weight; its bias (or null) of n values.
const float* bias_of(const py::object& bias, FloatArray& keep, int n) {
  if (bias.is_none()) return nullptr;
  keep = py::cast<FloatArray>(bias);
  if (keep.ndim() != 1 || keep.shape(0) != n)
    throw std::invalid_argument("bias must have one value per output channel (" +
                                std::to_string(n) + ")");
  return keep.data();
}

void check_weight(const FloatArray& weight, const char* layout) {
  if (weight.ndim() != 4) throw std::invalid_argument(std::string("weight must be ") + layout);
}

template <class Conv>
py::tuple out_size_tuple(const Conv& c, int h, int w) {
  const auto s = c.out_size(h, w);
  return py::make_tuple(s.first, s.second);
}

template <class Conv>
void window_properties(py::class_<Conv>& cls) {
  cls.def_property_readonly("cout", &Conv::cout)
      .def_property_readonly("cin", &Conv::cin)
      .def_property_readonly("groups", &Conv::groups)
      .def_property_readonly("kernel", [](const Conv& c) {
        return py::make_tuple(c.window().kh, c.window().kw);
      })
      .def_property_readonly("stride", [](const Conv& c) {
        return py::make_tuple(c.window().sh, c.window().sw);
      })
      .def_property_readonly("padding", [](const Conv& c) {
        return py::make_tuple(c.window().ph, c.window().pw);
      })
      .def_property_readonly("isa", [](const Conv& c) { return std::string(isa_name(c.isa())); })
      .def("out_size", &out_size_tuple<Conv>, py::arg("height"), py::arg("width"));
}

template <class Fn>
void pool_binding(py::module_& m, const char* name, Fn fn, const char* doc) {
  m.def(name, [fn](const Channels& src, const Channels& dst, py::object kernel,
                   py::object stride, py::object padding) {
    Window2d k = window_of(0, 0, stride.is_none() ? kernel : stride, padding, py::none());
    std::tie(k.kh, k.kw) = pair_arg(kernel, "kernel");
    py::gil_scoped_release release;
    fn(src, dst, k);
  }, py::arg("src"), py::arg("dst"), py::arg("kernel"), py::arg("stride") = py::none(),
     py::arg("padding") = 0, doc);
}

}  // namespace

SPARSR_BINDINGS(30) {
  py::class_<ConvGeneral> conv(m, "ConvGeneral",
      "Direct convolution for any kernel 1..11, stride 1..4, padding, dilation and groups.");
  conv.def(py::init([](const FloatArray& weight, py::object bias, py::object stride,
                       py::object padding, py::object dilation, int groups, py::object isa) {
        check_weight(weight, "(cout, cin / groups, kh, kw)");
        const int cout = static_cast<int>(weight.shape(0));
        FloatArray b;
        const float* bp = bias_of(bias, b, cout);
        const Window2d k = window_of(static_cast<int>(weight.shape(2)),
                                     static_cast<int>(weight.shape(3)), stride, padding, dilation);
        const Isa level = isa_arg(isa);
        py::gil_scoped_release release;
        return ConvGeneral(weight.data(), bp, cout, static_cast<int>(weight.shape(1)) * groups,
                           groups, k, level);
      }), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
      py::arg("padding") = 0, py::arg("dilation") = 1, py::arg("groups") = 1,
      py::arg("isa") = py::none(),
      "Packs (cout, cin / groups, kh, kw) weights for the ISA level (default: the active one).")
      .def("run", [](const ConvGeneral& c, const Channels& src, const Channels& dst, bool relu,
                     const Channels* residual, const py::object& slopes) {
        FloatArray s;
        const float* sp = slopes_arg(slopes, s, c.cout(), relu);
        py::gil_scoped_release release;
        c.run(src, dst, relu, sp, residual);
      }, py::arg("src"), py::arg("dst"), py::arg("relu") = false, py::arg("residual") = nullptr,
      py::arg("slopes") = py::none(),
      "dst (+ residual) = act(conv(src)); dst must be out_size(src.height, src.width). act: "
      "ReLU (relu), or r >= 0 ? r : slopes[o] * r with one float32 slope per output channel "
      "(leaky ReLU, PReLU), or none.")
      .def_property_readonly("dilation", [](const ConvGeneral& c) {
        return py::make_tuple(c.window().dh, c.window().dw);
      });
  window_properties(conv);

  py::class_<ConvTranspose> deconv(m, "ConvTranspose",
      "Transposed convolution (gather form) for any kernel 1..11, stride 1..4, padding, "
      "output padding and groups.");
  deconv.def(py::init([](const FloatArray& weight, py::object bias, py::object stride,
                         py::object padding, py::object output_padding, int groups,
                         py::object isa) {
        check_weight(weight, "(cin, cout / groups, kh, kw)");
        const int cout = static_cast<int>(weight.shape(1)) * groups;
        FloatArray b;
        const float* bp = bias_of(bias, b, cout);
        const Window2d k = window_of(static_cast<int>(weight.shape(2)),
                                     static_cast<int>(weight.shape(3)), stride, padding,
                                     py::none());
        const auto op = pair_arg(output_padding, "output_padding");
        const Isa level = isa_arg(isa);
        py::gil_scoped_release release;
        return ConvTranspose(weight.data(), bp, static_cast<int>(weight.shape(0)), cout, groups,
                             k, op.first, op.second, level);
      }), py::arg("weight"), py::arg("bias") = py::none(), py::arg("stride") = 1,
      py::arg("padding") = 0, py::arg("output_padding") = 0, py::arg("groups") = 1,
      py::arg("isa") = py::none(),
      "Packs (cin, cout / groups, kh, kw) weights for the ISA level (default: the active one).")
      .def("run", [](const ConvTranspose& c, const Channels& src, const Channels& dst) {
        py::gil_scoped_release release;
        c.run(src, dst);
      }, py::arg("src"), py::arg("dst"));
  window_properties(deconv);

  pool_binding(m, "max_pool", &max_pool,
               "Max pooling (floor size, -inf padding); stride defaults to the kernel.");
  pool_binding(m, "avg_pool", &avg_pool,
               "Average pooling (floor size, zero padding counted); stride defaults to the kernel.");
  m.def("pool_out_size", [](int height, int width, py::object kernel, py::object stride,
                            py::object padding) {
    Window2d k = window_of(0, 0, stride.is_none() ? kernel : stride, padding, py::none());
    std::tie(k.kh, k.kw) = pair_arg(kernel, "kernel");
    const auto s = pool_out_size(k, height, width);
    return py::make_tuple(s.first, s.second);
  }, py::arg("height"), py::arg("width"), py::arg("kernel"), py::arg("stride") = py::none(),
     py::arg("padding") = 0);
}

}  // namespace sparsr
