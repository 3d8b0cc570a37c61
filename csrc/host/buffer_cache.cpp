#include "buffer_cache.h"

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define FUSEDRNN_CACHE_MMAP 1
#endif

namespace fusedrnn {
namespace host {
namespace {

constexpr std::size_t kPage = 4096;

// A new block is a mapping of its own, not malloc memory: glibc serves a request below its
// mmap threshold (which rises to 32 MiB once a block that large is freed) from its heap,
// whose free top it keeps up to twice that, already faulted in 4 KiB pages. A block from
// there took no transparent huge pages from the launcher's advice (advise_huge), and freeing
// it gave nothing back to the system (empty_cache). A fresh anonymous mapping is untouched
// (the advice applies before the first fault), and unmapping it returns its pages at once.
void* map_block(std::size_t capacity) {
#ifdef FUSEDRNN_CACHE_MMAP
  void* data =
      mmap(nullptr, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (data == MAP_FAILED) throw std::bad_alloc();
#else
  void* data = std::aligned_alloc(kPage, capacity);  // capacity: a multiple of kPage
  if (data == nullptr) throw std::bad_alloc();
#endif
  return data;
}

void unmap_block(const CachedBlock& block) {
#ifdef FUSEDRNN_CACHE_MMAP
  munmap(block.data, block.capacity);
#else
  std::free(block.data);
#endif
}

struct Cache {
  std::mutex mutex;
  std::vector<CachedBlock> free;  // oldest first
  std::size_t free_bytes = 0;
  std::size_t in_use_bytes = 0;
  std::size_t limit = 0;
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;

  // Frees the oldest free blocks until at most `limit` bytes are free (mutex held).
  void trim() {
    std::size_t drop = 0, dropped = 0;
    while (drop < free.size() && free_bytes - dropped > limit) dropped += free[drop++].capacity;
    for (std::size_t i = 0; i < drop; ++i) unmap_block(free[i]);
    free.erase(free.begin(), free.begin() + static_cast<std::ptrdiff_t>(drop));
    free_bytes -= dropped;
  }
};

// Never destroyed: HostBuffers may be released during interpreter shutdown, after static
// destructors would have run.
Cache& cache() {
  static Cache* instance = new Cache();
  return *instance;
}

}  // namespace

CachedBlock cache_acquire(std::size_t bytes) {
  const std::size_t capacity = (bytes + kCacheGranule - 1) / kCacheGranule * kCacheGranule;
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    std::size_t best = c.free.size();
    for (std::size_t i = 0; i < c.free.size(); ++i) {
      const std::size_t cap = c.free[i].capacity;
      if (cap >= capacity && cap <= capacity + capacity / 4 &&
          (best == c.free.size() || cap < c.free[best].capacity))
        best = i;
    }
    if (best < c.free.size()) {
      const CachedBlock block = c.free[best];
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
      c.free_bytes -= block.capacity;
      c.in_use_bytes += block.capacity;
      ++c.hits;
      return block;
    }
    ++c.misses;
  }
  void* data = map_block(capacity);
  std::lock_guard<std::mutex> lock(c.mutex);
  c.in_use_bytes += capacity;
  return CachedBlock{data, capacity};
}

void cache_release(CachedBlock block) {
  if (block.data == nullptr) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.in_use_bytes -= block.capacity;
  c.free.push_back(block);
  c.free_bytes += block.capacity;
  c.trim();
}

CacheStats cache_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return CacheStats{c.free_bytes, c.free.size(), c.in_use_bytes, c.hits, c.misses};
}

void cache_set_limit(std::size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.limit = bytes;
  c.trim();
}

std::size_t cache_limit() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.limit;
}

}  // namespace host
}  // namespace fusedrnn
