// The private extension module sparsr._core is assembled from binding files:
// each registers a function that adds its part, so a new op family adds one
// file under bindings/ and touches nothing shared.
#pragma once

#include <pybind11/pybind11.h>

namespace sparsr {

using BindFn = void (*)(pybind11::module_& m);

// Registers fn to run when the module is created; lower order first (types
// before the functions whose signatures name them).
struct Binder {
  Binder(int order, BindFn fn);
};

}  // namespace sparsr

#define SPARSR_BIND_CAT2(a, b) a##b
#define SPARSR_BIND_CAT(a, b) SPARSR_BIND_CAT2(a, b)
// SPARSR_BINDINGS(order) { m.def(...); }  -- m is the module.
#define SPARSR_BINDINGS(order)                                                        \
  static void SPARSR_BIND_CAT(sparsr_bind_, __LINE__)(pybind11::module_ & m);       \
  static ::sparsr::Binder SPARSR_BIND_CAT(sparsr_binder_, __LINE__)(                  \
      order, &SPARSR_BIND_CAT(sparsr_bind_, __LINE__));                               \
  static void SPARSR_BIND_CAT(sparsr_bind_, __LINE__)(pybind11::module_ & m)
