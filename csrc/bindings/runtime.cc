// Bindings of the runtime: CPU levels, threads, the kernel table, features,
// channel lists, pixel sets and Conv2d.
#include <cmath>
#include <cstring>
#include <string>

#include "common.h"
#include "module.h"
#include "threadpool.h"

namespace sparsr {
namespace {

std::shared_ptr<Feature> feature_from_numpy(const FloatArray& a) {
  if (a.ndim() != 3) throw std::invalid_argument("expected a (channels, height, width) array");
  const int channels = static_cast<int>(a.shape(0)), height = static_cast<int>(a.shape(1)),
            width = static_cast<int>(a.shape(2));
  auto f = std::make_shared<Feature>(channels, height, width, channels);
  const float* src = a.data();   // FloatArray: C-contiguous float32
  py::gil_scoped_release release;
  for (int c = 0; c < channels; ++c)
    for (int y = 0; y < height; ++y)
      std::memcpy(&f->at(c, y, 0), src + (static_cast<int64_t>(c) * height + y) * width,
                  static_cast<size_t>(width) * sizeof(float));
  return f;
}

py::array_t<float> channels_to_numpy(const Channels& ch) {
  py::array_t<float> a({ch.size(), ch.height, ch.width});
  float* dst = a.mutable_data();
  py::gil_scoped_release release;
  for (int c = 0; c < ch.size(); ++c)
    for (int y = 0; y < ch.height; ++y)
      std::memcpy(dst + (static_cast<int64_t>(c) * ch.height + y) * ch.width,
                  ch.planes[c] + (y + 1) * ch.ld + 1, static_cast<size_t>(ch.width) * sizeof(float));
  return a;
}

}  // namespace

SPARSR_BINDINGS(0) {
  m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); },
        "Best instruction set this CPU and OS support.");
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); },
        "Instruction set in use (detected, lowered by SPARSR_ISA).");
  m.def("isa_supported", [](const std::string& name) { return isa_supported(isa_from_name(name)); });
  m.def("num_threads", &num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("release_buffers", &release_pooled_buffers,
        "Returns the pooled feature buffers to the OS; the bytes released.");
  m.def("pooled_bytes", &pooled_buffer_bytes, "Bytes of feature buffers held for reuse.");
  m.def("live_feature_bytes", &live_feature_bytes, "Bytes of features alive now.");
  m.def("mapped_bytes", &mapped_buffer_bytes,
        "Bytes of feature buffers mapped anew (not taken from the pool) since start.");
  m.def("reset_peak_feature_bytes", &reset_peak_feature_bytes,
        "The most bytes of features alive at once since the last reset; the next peak starts "
        "from the live bytes.");
  m.def("set_pool_limit", &set_pooled_buffer_limit, py::arg("bytes"),
        "The most bytes of freed feature buffers kept for reuse; returns the previous limit.");
  m.def("set_request_scale", &set_feature_request_scale, py::arg("scale"),
        "Features this thread makes ask the pool for scale (>= 1) times their bytes (band "
        "runs: a short band's buffers as large as the tallest band's); returns the previous "
        "scale.");
  m.def("reserve_band_arena", &reserve_band_arena, py::arg("bytes"),
        "Keeps a band arena of at least this many bytes (replaced only when nothing in it is "
        "alive); returns its size.");
  m.def("set_arena_use", &set_arena_use, py::arg("on"),
        "Features this thread makes come from the band arena while on (those it cannot hold "
        "from the pool); returns the previous setting.");
  m.def("set_arena_top", &set_arena_top, py::arg("on"),
        "Features this thread makes from the band arena come from its top end while on (those "
        "that outlive their band, apart from the band's own); returns the previous setting.");
  m.def("release_band_arena", &release_band_arena,
        "Unmaps the band arena when nothing in it is alive, else returns its free pages to the "
        "OS; the bytes it had touched.");
  m.def("band_arena_bytes", &band_arena_bytes, "Size of the band arena (0: none).");
  m.def("band_arena_touched_bytes", &band_arena_touched_bytes,
        "Bytes of the band arena ever used (resident since, unless released).");
  m.def("kernels", [] {
    py::list out;
    for (const KernelInfo& k : kernel_table()) {
      py::dict d;
      d["name"] = k.name;
      d["format"] = k.format;
      d["precision"] = k.precision;
      d["ksize"] = k.ksize;
      d["isa"] = isa_name(k.isa);
      d["block"] = k.block;
      d["tile"] = k.tile;
      out.append(d);
    }
    return out;
  }, "The micro-kernel table (csrc/kernels.inc).");
  m.def("choose_kernel", [](const std::string& format, int ksize, py::object isa,
                            const std::string& precision) {
    const KernelInfo& k = choose_kernel(format, ksize, isa_arg(isa), precision);
    py::dict d;
    d["name"] = k.name;
    d["isa"] = isa_name(k.isa);
    d["precision"] = k.precision;
    return d;
  }, py::arg("format"), py::arg("ksize"), py::arg("isa") = py::none(),
     py::arg("precision") = "f32",
     "The kernel a layer of this format and precision runs at the ISA level (default: the "
     "active one): name, isa, precision.");
  m.def("nm_unrolled_patterns", [] {
    std::vector<std::pair<int, int>> patterns;
#define SPARSR_NM_PATTERN(kept, group) patterns.emplace_back(kept, group);
#include "nm-patterns.inc"
#undef SPARSR_NM_PATTERN
    return patterns;
  }, "(N, M) patterns with a fully unrolled N:M kernel path (csrc/nm-patterns.inc); "
     "other patterns run the generic path.");

  m.def("csr_relative_cost", [](const FloatArray& weight, py::object isa) {
    if (weight.ndim() != 4 || weight.shape(2) != weight.shape(3))
      throw std::invalid_argument("weight must be (cout, cin, k, k)");
    return csr_relative_cost(weight.data(), static_cast<int>(weight.shape(0)),
                             static_cast<int>(weight.shape(1)), static_cast<int>(weight.shape(2)),
                             isa_arg(isa));
  }, py::arg("weight"), py::arg("isa") = py::none(),
     "Estimated time of the CSR kernel over the dense kernel for these (cout, cin, k, k) "
     "weights at the ISA level (default: the active one); below 1, CSR is faster.");
  m.def("bcsr_relative_cost", [](const FloatArray& weight, py::object isa) {
    if (weight.ndim() != 4 || weight.shape(2) != weight.shape(3))
      throw std::invalid_argument("weight must be (cout, cin, k, k)");
    return bcsr_relative_cost(weight.data(), static_cast<int>(weight.shape(0)),
                              static_cast<int>(weight.shape(1)),
                              static_cast<int>(weight.shape(2)), isa_arg(isa));
  }, py::arg("weight"), py::arg("isa") = py::none(),
     "Estimated time of the block-sparse (bcsr) kernel over the dense kernel for these "
     "(cout, cin, k, k) weights at the ISA level (default: the active one); below 1, bcsr "
     "is faster.");
  m.def("bcsr_kept_fraction", [](const FloatArray& weight, int block) {
    if (weight.ndim() != 4 || weight.shape(2) != weight.shape(3))
      throw std::invalid_argument("weight must be (cout, cin, k, k)");
    return bcsr_kept_fraction(weight.data(), static_cast<int>(weight.shape(0)),
                              static_cast<int>(weight.shape(1)),
                              static_cast<int>(weight.shape(2)), block);
  }, py::arg("weight"), py::arg("block") = kBcsrBlock,
     "Block positions (block output channels x one input channel and tap) with a nonzero, "
     "over all of them: the work of the bcsr kernel relative to dense.");
  m.def("csr_beneficial", [](const FloatArray& weight, py::object isa, double margin) {
    if (weight.ndim() != 4 || weight.shape(2) != weight.shape(3))
      throw std::invalid_argument("weight must be (cout, cin, k, k)");
    const int k = static_cast<int>(weight.shape(2));
    if (k != 1 && k != 3) return false;
    return csr_relative_cost(weight.data(), static_cast<int>(weight.shape(0)),
                             static_cast<int>(weight.shape(1)), k, isa_arg(isa)) < 1.0 - margin;
  }, py::arg("weight"), py::arg("isa") = py::none(), py::arg("margin") = 0.05,
     "Whether format='csr' is expected to run these weights faster than 'dense' by more "
     "than margin (the model's error is about 0.05), so a lightly sparse layer stays dense.");

  py::class_<Feature, std::shared_ptr<Feature>>(m, "Feature")
      .def(py::init<int, int, int, int>(), py::arg("channels"), py::arg("height"),
           py::arg("width"), py::arg("written") = 0,
           "All zero, except the interiors of planes [0, written), which the caller "
           "promises to write before reading (their borders are zero).")
      .def_static("from_numpy", &feature_from_numpy, py::arg("array"))
      .def_property_readonly("channels", &Feature::channels)
      .def_property_readonly("height", &Feature::height)
      .def_property_readonly("width", &Feature::width)
      .def("numpy", [](const std::shared_ptr<Feature>& f) { return channels_to_numpy(Channels::of(f)); },
           "Copy of the interior as a (channels, height, width) array.")
      .def("view", [](const std::shared_ptr<Feature>& f, py::object idx) {
             if (idx.is_none()) return Channels::of(f);
             return Channels::of(f, py::cast<std::vector<int>>(idx));
           }, py::arg("indices") = py::none());

  py::class_<Channels>(m, "Channels")
      .def_static("cat", &Channels::cat, py::arg("parts"))
      .def("__len__", &Channels::size)
      .def_readonly("height", &Channels::height)
      .def_readonly("width", &Channels::width)
      .def("numpy", &channels_to_numpy)
      .def("rows", [](const Channels& c, int r0, int r1) {
             // Rows [r0, r1) of every plane: the rows beside them (or the
             // border, at the ends) are the view's top and bottom border.
             if (r0 < 0 || r1 > c.height || r0 >= r1)
               throw std::out_of_range("rows [" + std::to_string(r0) + ", " +
                                       std::to_string(r1) + ") of a feature of " +
                                       std::to_string(c.height) + " rows");
             Channels s = c;
             s.height = r1 - r0;
             for (float*& p : s.planes) p += static_cast<int64_t>(r0) * c.ld;
             return s;
           }, py::arg("r0"), py::arg("r1"),
           "A view of rows [r0, r1); a 3x3 convolution over it reads rows r0 - 1 "
           "and r1 (or the zero border) as its padding.")
      .def("select", [](const Channels& c, const std::vector<int>& idx) {
             Channels s;
             s.height = c.height; s.width = c.width; s.ld = c.ld; s.owners = c.owners;
             for (int i : idx) {
               if (i < 0 || i >= c.size()) throw std::out_of_range("channel index out of range");
               s.planes.push_back(c.planes[i]);
             }
             return s;
           }, py::arg("indices"));

  m.def("copy", [](const Channels& src, const Channels& dst) {
    check_geometry(src, dst, "copy");
    if (src.size() != dst.size()) throw std::invalid_argument("copy: channel counts differ");
    const size_t bytes = static_cast<size_t>(src.width) * sizeof(float);
    py::gil_scoped_release release;
    for (int c = 0; c < src.size(); ++c)
      for (int y = 0; y < src.height; ++y)
        std::memcpy(dst.planes[c] + (y + 1) * dst.ld + 1, src.planes[c] + (y + 1) * src.ld + 1,
                    bytes);
  }, py::arg("src"), py::arg("dst"), "dst = src (interiors; equal geometry and channels).");

  m.def("copy_to_hwc", [](const Channels& src, py::array dst) {
    // Interleaves the planes into an (height, width, channels) array in place:
    // the layout images take, with no (channels, height, width) copy between.
    if (dst.ndim() != 3 || dst.shape(0) != src.height || dst.shape(1) != src.width ||
        dst.shape(2) != src.size())
      throw std::invalid_argument("copy_to_hwc: the array must be (" + std::to_string(src.height) +
                                  ", " + std::to_string(src.width) + ", " +
                                  std::to_string(src.size()) + ")");
    if (!dst.dtype().is(py::dtype::of<float>()) || !(dst.flags() & py::array::c_style) ||
        !dst.writeable())
      throw std::invalid_argument(
          "copy_to_hwc: the array must be float32, C-contiguous and writeable");
    float* out = static_cast<float*>(dst.mutable_data());
    const int c = src.size();
    py::gil_scoped_release release;
    parallel_for(static_cast<size_t>(src.height), [&](size_t y) {
      float* row = out + static_cast<int64_t>(y) * src.width * c;
      for (int k = 0; k < c; ++k) {
        const float* in = src.planes[k] + (static_cast<int64_t>(y) + 1) * src.ld + 1;
        for (int x = 0; x < src.width; ++x) row[static_cast<int64_t>(x) * c + k] = in[x];
      }
    });
  }, py::arg("src"), py::arg("dst"), "dst[y, x, c] = src[c, y, x] for an (H, W, C) float32 array.");

  py::class_<PixelSet>(m, "PixelSet")
      .def_static("full", &PixelSet::full, py::arg("height"), py::arg("width"))
      .def_static("from_mask", [](const ByteArray& mask, int height, int width) {
             if (mask.ndim() != 2) throw std::invalid_argument("mask must be 2-D");
             return PixelSet::from_mask(mask.data(), static_cast<int>(mask.shape(0)),
                                        static_cast<int>(mask.shape(1)), height, width);
           }, py::arg("mask"), py::arg("height"), py::arg("width"))
      .def("complement", &PixelSet::complement)
      .def_readonly("count", &PixelSet::count)
      .def_readonly("height", &PixelSet::height)
      .def_readonly("width", &PixelSet::width)
      .def_property_readonly("n_runs", [](const PixelSet& s) { return s.runs.size(); });

  py::class_<Conv2d>(m, "Conv2d")
      .def(py::init([](const FloatArray& weight, py::object bias, py::object isa,
                       const std::string& format, int n, int m, const std::string& precision,
                       float in_scale, int in_zero_point) {
             if (weight.ndim() != 4 || weight.shape(2) != weight.shape(3))
               throw std::invalid_argument("weight must be (cout, cin, k, k)");
             const int cout = static_cast<int>(weight.shape(0));
             FloatArray b;
             if (!bias.is_none()) {
               b = py::cast<FloatArray>(bias);
               if (b.ndim() != 1 || b.shape(0) != cout)
                 throw std::invalid_argument("bias must have one value per output channel");
             }
             FormatOptions options;
             options.n = n;
             options.m = m;
             Int8Input quant;
             quant.scale = in_scale;
             quant.zero_point = in_zero_point;
             py::gil_scoped_release release;
             return Conv2d(weight.data(), bias.is_none() ? nullptr : b.data(), cout,
                           static_cast<int>(weight.shape(1)), static_cast<int>(weight.shape(2)),
                           isa_arg(isa), format, options, precision, quant);
           }), py::arg("weight"), py::arg("bias") = py::none(), py::arg("isa") = py::none(),
           py::arg("format") = "dense", py::arg("n") = 0, py::arg("m") = 0,
           py::arg("precision") = "f32", py::arg("in_scale") = 0.0f, py::arg("in_zero_point") = 0,
           "Packs (cout, cin, k, k) weights for the best kernel of the format at the ISA level. "
           "precision='bf16' or 'int8' runs such a kernel where the level has one of the format "
           "(avx512bf16, or the scalar twin at the scalar level), else the f32 one. int8 "
           "quantizes the input as u8 round(x / in_scale) + in_zero_point (0 or 128).")
      .def_property_readonly("format", [](const Conv2d& c) { return std::string(c.kernel().format); })
      .def_property_readonly("kernel", [](const Conv2d& c) { return std::string(c.kernel().name); })
      .def_property_readonly("isa", [](const Conv2d& c) { return std::string(isa_name(c.kernel().isa)); })
      .def_property_readonly("precision", [](const Conv2d& c) { return std::string(c.kernel().precision); })
      .def_property_readonly("cout", &Conv2d::cout)
      .def_property_readonly("cin", &Conv2d::cin)
      .def_property_readonly("ksize", &Conv2d::ksize)
      .def_static("use_gather", &Conv2d::use_gather, py::arg("pixels"),
                  "Whether a pixel set is convolved by gather -> convolve -> scatter.")
      .def_property_readonly("n", &Conv2d::n, "N of an N:M format (0 otherwise).")
      .def_property_readonly("m", &Conv2d::m, "M of an N:M format (0 otherwise).")
      .def_property_readonly("nnz", &Conv2d::nnz, "Nonzero weights of the layer.")
      .def("__call__", [](const Conv2d& c, const Channels& in, const Channels& out,
                          const PixelSet& pixels, bool relu, int cin, int cout,
                          const Channels* residual, const py::object& slopes) {
             FloatArray s;
             const float* sp = slopes_arg(slopes, s, c.cout(), relu);
             py::gil_scoped_release release;
             c.run(in, out, pixels, relu, sp, cin, cout, residual);
           }, py::arg("input"), py::arg("output"), py::arg("pixels"), py::arg("relu") = false,
           py::arg("cin") = -1, py::arg("cout") = -1, py::arg("residual") = nullptr,
           py::arg("slopes") = py::none(),
           "output (+ residual) = act(conv(input)) at the pixels. act: ReLU (relu), or "
           "r >= 0 ? r : slopes[o] * r with one float32 slope per output channel of the layer "
           "(leaky ReLU, PReLU), or none.");
}

}  // namespace sparsr
