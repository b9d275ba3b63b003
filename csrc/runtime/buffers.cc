#include "runtime.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <sys/mman.h>

#include "threadpool.h"

namespace sparsr {

// ---------------------------------------------------------------- Feature

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

// `bytes` (whole 4 KB pages) mapped anonymously, 2 MB aligned and advised as
// huge pages: a convolution tile reads a row of every input channel, each in
// its own 4 KB page, which alone overflows the first-level TLB (measured: a
// 1x1 256->64 over 360x640 on one thread, 135 -> 130 ms). nullptr when the
// mapping fails.
char* map_huge_aligned(size_t bytes, int flags) {
  void* m = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  char* base = static_cast<char*>(m);
  char* p = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(base) + kHugePage - 1) /
                                    kHugePage * kHugePage);
  if (p > base) munmap(base, p - base);
  const size_t tail = (base + bytes + kHugePage) - (p + bytes);
  if (tail) munmap(p + bytes, tail);
#ifdef MADV_HUGEPAGE
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return p;
}

// Large feature buffers come back to this pool instead of the OS: a fresh
// mapping costs a page fault per 4 KiB on first touch, which for a network
// that allocates dozens of 60 MB features per pass costs more than the
// convolutions it feeds. Freed buffers are kept up to a byte limit and reused
// for requests of the same size.
class BufferPool {
 public:
  static BufferPool& get() {
    static BufferPool* pool = new BufferPool();  // outlives static teardown
    return *pool;
  }

  // Buffers are kept by their mapped size (whole 2 MB pages), so that
  // features a few rows apart (band execution's windows) share them.
  //
  // A buffer up to an eighth larger serves too (the smallest that fits): band
  // execution's features of one value differ by their halo rows from band to
  // band and step to step. *mapped gets the buffer's own size.
  float* take(size_t bytes, size_t* mapped) {
    bytes = mapped_size(bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 8) {
        float* p = it->second.second;
        *mapped = it->first;
        pooled_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    *mapped = bytes;
    // Mapped directly, not through malloc: glibc raises its mmap threshold to
    // the size of each mapping freed, after which buffers of up to 32 MB come
    // from the heap and their pages stay with the process when freed (band
    // execution, whose buffers come in many sizes, grew to several times its
    // working set so).
    char* p = map_huge_aligned(bytes, 0);
    if (!p) throw std::bad_alloc();
    mapped_total_.fetch_add(bytes, std::memory_order_relaxed);
    return reinterpret_cast<float*>(p);
  }

  static size_t mapped_size(size_t bytes) {
    return (bytes + kHugePage - 1) / kHugePage * kHugePage;
  }
  static void unmap(float* p, size_t mapped) { munmap(p, mapped); }

  // Returns every pooled buffer to the OS (between images of different sizes).
  size_t release_all() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t bytes = pooled_;
    for (auto& [size, entry] : free_) unmap(entry.second, size);
    free_.clear();
    pooled_ = 0;
    return bytes;
  }

  size_t pooled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return pooled_;
  }

  size_t mapped_total() const { return mapped_total_.load(std::memory_order_relaxed); }
  void count_mapped(size_t bytes) { mapped_total_.fetch_add(bytes, std::memory_order_relaxed); }

  // A lower limit lets go of the buffers over it at once, the oldest first.
  size_t set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t old = limit_;
    limit_ = bytes;
    evict_until(0);
    return old;
  }

  static constexpr size_t kMaxPooledBytes = size_t(1) << 30;

  // bytes: as mapped (take's *mapped). Over the limit, the buffers freed
  // longest ago go first: a band's steps free and ask for the same sizes
  // again soon, while the sizes of a band before (or of a pass before) may
  // never come back.
  void give(float* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes > limit_) {
      unmap(p, bytes);
      return;
    }
    evict_until(bytes);
    free_.emplace(bytes, std::make_pair(++clock_, p));
    pooled_ += bytes;
  }

 private:
  std::mutex mutex_;
  size_t limit_ = kMaxPooledBytes;
  // Unmaps the oldest buffers until `room` more bytes fit under the limit.
  void evict_until(size_t room) {
    while (!free_.empty() && pooled_ + room > limit_) {
      auto oldest = free_.begin();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->second.first < oldest->second.first) oldest = it;
      unmap(oldest->second.second, oldest->first);
      pooled_ -= oldest->first;
      free_.erase(oldest);
    }
  }

  std::multimap<size_t, std::pair<uint64_t, float*>> free_;   // size -> (when freed, buffer)
  uint64_t clock_ = 0;
  size_t pooled_ = 0;
  std::atomic<size_t> mapped_total_{0};
};

// The band arena (runtime.h): a best-fit heap over one mapping, its free
// blocks merged with their neighbours. A band's steps free and make features
// of a dozen sizes; from one region the pages a band touched serve the next
// band's features of any size, where the pool would map (and the kernel
// clear) a new buffer for every size it does not hold. Features that outlive
// their band (the rows kept for the next) are carved from the top, the
// band's own from the bottom, so that the one kind does not split the room
// of the other.
class BandArena {
 public:
  static BandArena& get() {
    static BandArena* arena = new BandArena();  // outlives static teardown
    return *arena;
  }

  size_t reserve(size_t bytes) {
    bytes = round(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes > size_ && live_ == 0) {
      unmap_locked();
      base_ = map_huge_aligned(bytes, MAP_NORESERVE);
      if (base_) {
        size_ = high_ = bytes;
        free_.emplace(0, bytes);
      }
    }
    return size_;
  }

  // nullptr when no free block holds `bytes`. *fresh: bytes never used before.
  // top: from the end of the highest block that holds it, else from the start
  // of the smallest (the lowest of equals).
  float* take(size_t bytes, bool top, size_t* taken, size_t* fresh) {
    bytes = size_class(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_.end();
    for (auto b = free_.begin(); b != free_.end(); ++b)
      if (b->second >= bytes && (it == free_.end() || top || b->second < it->second)) it = b;
    if (it != free_.end()) {
      const size_t start = it->first, rest = it->second - bytes;
      const size_t at = top ? start + rest : start;
      free_.erase(it);
      if (rest) free_.emplace(top ? start : at + bytes, rest);
      live_ += bytes;
      *taken = bytes;
      // Never used: [low_, high_), inside one free block (nothing was ever
      // carved there), which a block taken from reaches from below or above.
      const size_t lo = std::max(at, low_), hi = std::min(at + bytes, high_);
      *fresh = hi > lo ? hi - lo : 0;
      if (hi > lo) {
        if (lo == low_)
          low_ = hi;
        else
          high_ = lo;
      }
      return reinterpret_cast<float*>(base_ + at);
    }
    // Split too finely for this feature, which the pool makes instead: the
    // free pages go back to the OS, so that the two together hold no more
    // than the features alive.
    drop_free_pages_locked();
    return nullptr;
  }

  void give(float* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t at = reinterpret_cast<char*>(p) - base_;
    live_ -= bytes;
    auto next = free_.lower_bound(at);
    if (next != free_.end() && next->first == at + bytes) {
      bytes += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto before = std::prev(next);
      if (before->first + before->second == at) {
        at = before->first;
        bytes += before->second;
        free_.erase(before);
      }
    }
    free_.emplace(at, bytes);
  }

  // Unmapped when nothing in it is alive, else its free pages dropped.
  size_t release() {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t bytes = touched_locked();
    if (live_ == 0)
      unmap_locked();
    else
      drop_free_pages_locked();
    return bytes;
  }

  size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return size_;
  }
  size_t touched() {
    std::lock_guard<std::mutex> lock(mutex_);
    return touched_locked();
  }

 private:
  static size_t round(size_t bytes) { return (bytes + 4095) / 4096 * 4096; }
  // Sixteen sizes per doubling (at most 1/16 more): features a row or two
  // apart (one value from band to band, or two values) take one size, so
  // that each fits the room the other left.
  static size_t size_class(size_t bytes) {
    size_t step = 4096;
    while (step * 32 <= bytes) step *= 2;
    return (bytes + step - 1) / step * step;
  }
  size_t touched_locked() const { return low_ + (size_ - high_); }
  void drop_pages_locked(size_t begin, size_t end) {
    begin = (begin + 4095) / 4096 * 4096;
    end = end / 4096 * 4096;
    if (end > begin) madvise(base_ + begin, end - begin, MADV_DONTNEED);
  }
  void drop_free_pages_locked() {
    for (auto& [at, n] : free_) {
      drop_pages_locked(at, std::min(at + n, low_));
      drop_pages_locked(std::max(at, high_), at + n);
    }
  }
  void unmap_locked() {
    if (base_) munmap(base_, size_);
    base_ = nullptr;
    size_ = low_ = high_ = 0;
    free_.clear();
  }

  std::mutex mutex_;
  char* base_ = nullptr;
  // Bytes [0, low_) and [high_, size_) have been used (resident unless dropped).
  size_t size_ = 0, live_ = 0, low_ = 0, high_ = 0;
  std::map<size_t, size_t> free_;   // offset -> bytes, no two adjacent
};

// This thread's settings for the features it makes (runtime.h).
thread_local bool t_use_arena = false, t_arena_top = false;
thread_local double t_request_scale = 1.0;

// Buffers below this size come from malloc's own free lists cheaply.
constexpr size_t kPoolMinBytes = size_t(1) << 20;

// Bytes of features alive, and their high-water mark since the last reset:
// what the executor's memory estimates are checked against.
std::atomic<size_t> g_live_bytes{0};
std::atomic<size_t> g_peak_bytes{0};

void count_feature(size_t bytes) {
  const size_t now = g_live_bytes.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  size_t peak = g_peak_bytes.load(std::memory_order_relaxed);
  while (now > peak && !g_peak_bytes.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

}  // namespace

size_t live_feature_bytes() { return g_live_bytes.load(std::memory_order_relaxed); }

size_t reset_peak_feature_bytes() {
  return g_peak_bytes.exchange(g_live_bytes.load(std::memory_order_relaxed),
                               std::memory_order_relaxed);
}

size_t release_pooled_buffers() {
  return BufferPool::get().release_all() + BandArena::get().release();
}
size_t release_band_arena() { return BandArena::get().release(); }
size_t reserve_band_arena(size_t bytes) { return BandArena::get().reserve(bytes); }
bool set_arena_use(bool on) {
  const bool old = t_use_arena;
  t_use_arena = on;
  return old;
}
bool set_arena_top(bool on) {
  const bool old = t_arena_top;
  t_arena_top = on;
  return old;
}
size_t band_arena_bytes() { return BandArena::get().size(); }
size_t band_arena_touched_bytes() { return BandArena::get().touched(); }
size_t pooled_buffer_bytes() { return BufferPool::get().pooled(); }
size_t mapped_buffer_bytes() { return BufferPool::get().mapped_total(); }
size_t set_pooled_buffer_limit(size_t bytes) { return BufferPool::get().set_limit(bytes); }

double set_feature_request_scale(double scale) {
  if (!(scale >= 1.0) || scale > 1e6)
    throw std::invalid_argument("feature request scale must be in [1, 1e6], got " +
                                std::to_string(scale));
  const double old = t_request_scale;
  t_request_scale = scale;
  return old;
}

void Feature::Free::operator()(float* p) const {
  g_live_bytes.fetch_sub(bytes, std::memory_order_relaxed);
  if (arena) {
    BandArena::get().give(p, mapped);
  } else if (mapped) {
    BufferPool::get().give(p, mapped);
  } else {
    std::free(p);
  }
}

Feature::Feature(int channels, int height, int width, int written)
    : channels_(channels), height_(height), width_(width), data_(nullptr, Free{}) {
  if (channels <= 0 || height <= 0 || width <= 0)
    throw std::invalid_argument("feature dimensions must be positive, got " +
                                std::to_string(channels) + "x" + std::to_string(height) + "x" +
                                std::to_string(width));
  if (written < 0 || written > channels)
    throw std::invalid_argument("written planes must be in [0, channels], got " +
                                std::to_string(written));
  ld_ = padded_row_stride(width);
  plane_ = (static_cast<int64_t>(height) + 2) * ld_;
  const size_t bytes =
      ((static_cast<size_t>(channels) * plane_ + kFeatureSlack) * sizeof(float) + 63) / 64 * 64;
  float* p;
  size_t mapped = 0;
  bool in_arena = false;
  if (bytes >= kPoolMinBytes) {
    const size_t request = std::max(bytes, static_cast<size_t>(bytes * t_request_scale));
    size_t fresh = 0;
    p = t_use_arena ? BandArena::get().take(request, t_arena_top, &mapped, &fresh) : nullptr;
    in_arena = p != nullptr;
    if (in_arena)
      BufferPool::get().count_mapped(fresh);
    else
      p = BufferPool::get().take(request, &mapped);
    // Zero in parallel: every feature starts all zero (borders, and the
    // sparse channels at unimportant pixels that SMSR never writes), except
    // the interiors of the planes the caller writes.
    const size_t chunk = 1 << 20;
    const size_t skip = static_cast<size_t>(written) * plane_ * sizeof(float);
    const size_t n = (bytes - skip + chunk - 1) / chunk;
    char* base = reinterpret_cast<char*>(p);
    parallel_for(n, [&](size_t i) {
      const size_t begin = skip + i * chunk;
      std::memset(base + begin, 0, std::min(chunk, bytes - begin));
    });
    parallel_for(static_cast<size_t>(written), [&](size_t c) {
      float* plane = p + c * plane_;
      std::memset(plane, 0, ld_ * sizeof(float));                            // top border row
      std::memset(plane + (height + 1) * ld_, 0, ld_ * sizeof(float));       // bottom border row
      for (int y = 1; y <= height; ++y) {
        float* row = plane + y * ld_;
        row[0] = 0.0f;                                                       // left border
        std::memset(row + width + 1, 0, (ld_ - width - 1) * sizeof(float));  // right border, padding
      }
    });
  } else {
    p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
  }
  data_ = std::unique_ptr<float, Free>(p, Free{bytes, mapped, in_arena});
  count_feature(bytes);
}

// ---------------------------------------------------------------- Channels

Channels Channels::of(const std::shared_ptr<Feature>& f) {
  std::vector<int> all(f->channels());
  for (int i = 0; i < f->channels(); ++i) all[i] = i;
  return of(f, all);
}

Channels Channels::of(const std::shared_ptr<Feature>& f, const std::vector<int>& indices) {
  Channels c;
  c.height = f->height();
  c.width = f->width();
  c.ld = f->ld();
  c.owners.push_back(f);
  for (int i : indices) {
    if (i < 0 || i >= f->channels())
      throw std::out_of_range("channel index " + std::to_string(i) + " out of range for a " +
                              std::to_string(f->channels()) + "-channel feature");
    c.planes.push_back(f->plane(i));
  }
  return c;
}

Channels Channels::cat(const std::vector<Channels>& parts) {
  Channels c;
  for (const Channels& p : parts) {
    if (c.owners.empty() && c.planes.empty()) {
      c.height = p.height;
      c.width = p.width;
      c.ld = p.ld;
    } else if (p.height != c.height || p.width != c.width) {
      throw std::invalid_argument("cannot concatenate channels of different sizes");
    }
    c.planes.insert(c.planes.end(), p.planes.begin(), p.planes.end());
    c.owners.insert(c.owners.end(), p.owners.begin(), p.owners.end());
  }
  return c;
}

// ---------------------------------------------------------------- PixelSet

PixelSet PixelSet::full(int height, int width) {
  PixelSet s;
  s.height = height;
  s.width = width;
  s.runs.reserve(height);
  for (int y = 0; y < height; ++y) s.runs.push_back(Run{y, 0, width});
  s.count = static_cast<int64_t>(height) * width;
  return s;
}

PixelSet PixelSet::from_mask(const uint8_t* mask, int mask_h, int mask_w, int height, int width) {
  PixelSet s;
  s.height = height;
  s.width = width;
  const int rows = std::min(mask_h, height), cols = std::min(mask_w, width);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* m = mask + static_cast<size_t>(y) * mask_w;
    int x = 0;
    while (x < cols) {
      while (x < cols && !m[x]) ++x;
      if (x == cols) break;
      const int x0 = x;
      while (x < cols && m[x]) ++x;
      s.runs.push_back(Run{y, x0, x});
      s.count += x - x0;
    }
  }
  return s;
}

PixelSet PixelSet::complement() const {
  PixelSet s;
  s.height = height;
  s.width = width;
  size_t r = 0;
  for (int y = 0; y < height; ++y) {
    int x = 0;
    for (; r < runs.size() && runs[r].y == y; ++r) {
      if (runs[r].x0 > x) s.runs.push_back(Run{y, x, runs[r].x0});
      x = runs[r].x1;
    }
    if (x < width) s.runs.push_back(Run{y, x, width});
  }
  s.count = static_cast<int64_t>(height) * width - count;
  return s;
}


std::vector<std::pair<size_t, size_t>> split_runs(const PixelSet& pixels, int64_t cost_per_pixel) {
  // Enough tasks to balance two or more threads, few enough to keep the
  // per-task overhead (a run costs a little even when short) small.
  std::vector<std::pair<size_t, size_t>> tasks;
  const size_t n = pixels.runs.size();
  if (n == 0) return tasks;
  const int64_t per_run_overhead = 16;
  int64_t total = 0;
  for (const Run& r : pixels.runs) total += (r.x1 - r.x0) + per_run_overhead;
  const int threads = num_threads();
  const int64_t min_task = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cost_per_pixel));
  const int64_t target = std::max<int64_t>(min_task, total / (threads * 8) + 1);
  size_t begin = 0;
  int64_t acc = 0;
  for (size_t i = 0; i < n; ++i) {
    acc += (pixels.runs[i].x1 - pixels.runs[i].x0) + per_run_overhead;
    if (acc >= target) {
      tasks.emplace_back(begin, i + 1);
      begin = i + 1;
      acc = 0;
    }
  }
  if (begin < n) tasks.emplace_back(begin, n);
  return tasks;
}

}  // namespace sparsr
