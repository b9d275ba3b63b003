// sparsr._peak: the measured FMA peak the benchmarks report kernel rates
// against. A module of its own: it measures the machine, not the engine.
#include <pybind11/pybind11.h>

#include <string>

#include "peak.h"

namespace py = pybind11;

PYBIND11_MODULE(_peak, m) {
  m.doc() = "Measured FMA peak of this CPU (for the benchmarks)";
  m.def("fma_peak_gflops", [](const std::string& isa, double seconds, bool loads) {
    const sparsr::Isa level = sparsr::isa_from_name(isa);
    py::gil_scoped_release release;
    return sparsr::measure_fma_peak(level, seconds, loads);
  }, py::arg("isa"), py::arg("seconds") = 0.5, py::arg("loads") = false,
     "Measured GFLOP/s of an FMA loop on every kernel thread: register only, or "
     "(loads=True) each FMA reading one aligned vector from L1.");
}
