// Helpers shared by the binding files.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "runtime.h"

namespace sparsr {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// None -> the active level, else the named one.
inline Isa isa_arg(const py::object& isa) {
  if (isa.is_none()) return active_isa();
  return isa_from_name(py::cast<std::string>(isa));
}

// A convolution's negative slopes (None: null), one float32 per output
// channel of the layer; keep holds the array while the kernels read it.
inline const float* slopes_arg(const py::object& slopes, FloatArray& keep, int cout, bool relu) {
  if (slopes.is_none()) return nullptr;
  if (relu) throw std::invalid_argument("relu and slopes are exclusive: give one activation");
  keep = py::cast<FloatArray>(slopes);
  if (keep.ndim() != 1 || keep.shape(0) != cout)
    throw std::invalid_argument(
        "slopes must be one value per output channel (" + std::to_string(cout) + "), got " +
        (keep.ndim() == 1 ? std::to_string(keep.size()) + " values"
                          : "a " + std::to_string(keep.ndim()) + "-D array"));
  return keep.data();
}

}  // namespace sparsr
