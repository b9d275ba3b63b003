// Bindings of pixel (un)shuffle and resizing (ops/spatial.h).
#include "common.h"
#include "module.h"
#include "spatial.h"

namespace sparsr {

SPARSR_BINDINGS(20) {
  m.def("pixel_shuffle", [](const Channels& src, const Channels& dst, int factor) {
    py::gil_scoped_release release;
    pixel_shuffle(src, dst, factor);
  }, py::arg("src"), py::arg("dst"), py::arg("factor"),
     "(C r^2, H, W) -> (C, H r, W r) in PyTorch's channel order.");
  m.def("pixel_unshuffle", [](const Channels& src, const Channels& dst, int factor) {
    py::gil_scoped_release release;
    pixel_unshuffle(src, dst, factor);
  }, py::arg("src"), py::arg("dst"), py::arg("factor"),
     "(C, H r, W r) -> (C r^2, H, W), the inverse of pixel_shuffle.");
  m.def("resize", [](const Channels& src, const Channels& dst, const std::string& mode,
                     bool align_corners, double scale_h, double scale_w, const py::object& isa) {
    const ResizeMode m = resize_mode_from_name(mode);
    const Isa level = isa_arg(isa);
    py::gil_scoped_release release;
    resize(src, dst, m, align_corners, scale_h, scale_w, level);
  }, py::arg("src"), py::arg("dst"), py::arg("mode"), py::arg("align_corners") = false,
     py::arg("scale_h") = 0.0, py::arg("scale_w") = 0.0, py::arg("isa") = py::none(),
     "src resized to dst's height and width as torch.nn.functional.interpolate: mode "
     "nearest (legacy), bilinear or bicubic (a = -0.75); scale_h, scale_w: the scale "
     "factors the output size was computed from (then coordinates map with 1 / scale), or "
     "0 to map with in / out. isa: 'scalar', 'avx2', 'avx512', lowered to the active "
     "level (default: the active level).");
}

}  // namespace sparsr
