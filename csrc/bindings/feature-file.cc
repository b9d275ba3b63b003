// Rows of a feature kept in a file: band execution's values stored whole
// between passes when memory is short (python/sparsr/bands.py, Store).
//
// The file holds the planes in a Feature's own layout, (height + 2) rows of
// ld floats per plane, borders included: a band's rows of a plane are one
// pwrite (their left and right borders are zero, as in every feature), the
// top and bottom border rows stay the zeros of a new (truncated) file. A
// read of rows [r0, r1) then fills a whole feature with one pread per plane:
// its top and bottom border rows are the rows beside (or the image border),
// as a 3x3 convolution over a view of those rows reads them.
//
// Plain pread/pwrite into pooled buffers, not a mapping of the file: a
// mapping's pages would count as the process's memory until dropped, and
// every band would fault them in again 4 KiB at a time.
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "common.h"
#include "module.h"

namespace sparsr {
namespace {

void check_rows(int height, int r0, int r1) {
  if (r0 < 0 || r1 > height || r0 >= r1)
    throw std::out_of_range("rows [" + std::to_string(r0) + ", " + std::to_string(r1) +
                            ") of a stored feature of " + std::to_string(height) + " rows");
}

// All of n bytes at offset, or a system_error (OSError in Python) naming what.
template <typename Io>
void whole(Io io, char* p, size_t n, off_t offset, const char* what) {
  while (n > 0) {
    const ssize_t done = io(p, n, offset);
    if (done < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), what);
    }
    if (done == 0) throw std::system_error(EIO, std::generic_category(), what);
    p += done;
    n -= static_cast<size_t>(done);
    offset += done;
  }
}

}  // namespace

SPARSR_BINDINGS(30) {
  m.def("feature_file_bytes", [](int channels, int height, int width) {
    return static_cast<int64_t>(channels) * (height + 2) * padded_row_stride(width) *
           static_cast<int64_t>(sizeof(float));
  }, py::arg("channels"), py::arg("height"), py::arg("width"),
     "Bytes of a feature file (planes in a Feature's layout, borders included).");

  m.def("write_feature_rows", [](int fd, const Channels& src, int height, int r0) {
    check_rows(height, r0, r0 + src.height);
    if (src.ld != padded_row_stride(src.width))
      throw std::invalid_argument("write_feature_rows: rows of an unusual stride");
    const size_t bytes = static_cast<size_t>(src.height) * src.ld * sizeof(float);
    py::gil_scoped_release release;
    for (int c = 0; c < src.size(); ++c) {
      // Rows r0 + 1 ... of plane c, whole: their border columns are zero, as
      // in every feature.
      const off_t at = static_cast<off_t>((static_cast<int64_t>(c) * (height + 2) + r0 + 1) *
                                          src.ld * sizeof(float));
      whole([&](char* p, size_t n, off_t off) { return pwrite(fd, p, n, off); },
            reinterpret_cast<char*>(src.planes[c] + src.ld), bytes, at, "writing a feature file");
    }
  }, py::arg("fd"), py::arg("src"), py::arg("height"), py::arg("r0"),
     "Writes the rows of src as rows [r0, r0 + src.height) of a feature file of height rows.");

  m.def("read_feature_rows", [](int fd, int channels, int height, int width, int r0, int r1) {
    check_rows(height, r0, r1);
    auto f = std::make_shared<Feature>(channels, r1 - r0, width, channels);
    const int64_t ld = f->ld();
    const size_t bytes = static_cast<size_t>(r1 - r0 + 2) * ld * sizeof(float);
    {
      py::gil_scoped_release release;
      for (int c = 0; c < channels; ++c) {
        // File rows r0 ... r1 + 1 of plane c: the rows [r0, r1) and one beside each end.
        const off_t at = static_cast<off_t>((static_cast<int64_t>(c) * (height + 2) + r0) * ld *
                                            sizeof(float));
        whole([&](char* p, size_t n, off_t off) { return pread(fd, p, n, off); },
              reinterpret_cast<char*>(f->plane(c)), bytes, at, "reading a feature file");
      }
    }
    return Channels::of(f);
  }, py::arg("fd"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("r0"),
     py::arg("r1"),
     "Rows [r0, r1) of a feature file as Channels whose border rows are the file's rows "
     "beside them (zero at the image's ends).");
}

}  // namespace sparsr
