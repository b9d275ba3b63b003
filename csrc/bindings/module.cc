// PYBIND11_MODULE(_core): runs every registered binding function in order.
#include "module.h"

#include <algorithm>
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
}
