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

}  // namespace sparsr
