// PYBIND11_MODULE(_core): runs every registered binding function in order.
#include "module.h"

#include <algorithm>
#include <system_error>
#include <utility>
#include <vector>

namespace sparsr {
namespace {

std::vector<std::pair<int, BindFn>>& binders() {
  static std::vector<std::pair<int, BindFn>> list;
  return list;
}

}  // namespace

Binder::Binder(int order, BindFn fn) { binders().emplace_back(order, fn); }

}  // namespace sparsr

PYBIND11_MODULE(_core, m) {
  m.doc() = "sparsr native kernels and runtime (private: use the sparsr package)";
  auto list = sparsr::binders();
  std::stable_sort(list.begin(), list.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [order, fn] : list) fn(m);
  // System call failures (a full disk, a bad descriptor) reach Python as
  // OSError with their errno, as Python's own file calls raise them.
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::system_error& e) {
      pybind11::object err = pybind11::module_::import("builtins").attr("OSError")(
          e.code().value(), e.what());
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });
}
