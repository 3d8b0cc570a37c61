// A cache of large host buffers whose pages stay resident between calls.
//
// Why: the host launcher's per-call buffers ([T, B, G * H] saved gates, the backward's dxg,
// ...) are tens of MiB. glibc serves such an allocation by its own mmap and unmaps it on
// free, so every training call page-faulted them in again, 4 KiB at a time, each fault zeroing
// a page: measured on the 2-core Xeon at C5 (LSTM B = 64, I = H = 512, T = 64) 41,000 faults
// (160 MiB) per training call, and the call 19 % faster with no faults at all (docs/design.md
// §5.4, "The buffer cache"). A freed block here keeps its pages, and the next call of the same
// shapes takes it back with no fault.
//
// The launcher allocates only buffers the user does not see through this cache (saved tensors
// and backward workspaces, fusedrnn/backends/native.py `_cached_empty`): their tensors come from
// torch.frombuffer over a HostBuffer (bindings.cpp), whose destructor (when the last tensor
// viewing it dies) returns the block here. Free blocks are kept up to a limit (bytes; the
// Python side sets it from FUSEDRNN_HOST_CACHE_MB, fusedrnn/backends/host.py); beyond it the
// oldest free blocks are given back to the system. A new block is an anonymous mapping of
// its own (untouched, and unmapped when freed), never recycled malloc heap. Thread-safe
// (blocks are released from autograd's threads).
#pragma once

#include <cstddef>
#include <cstdint>

namespace fusedrnn {
namespace host {

struct CachedBlock {
  void* data = nullptr;  // page-aligned
  std::size_t capacity = 0;  // bytes, a multiple of kCacheGranule
};

// Blocks are sized in granules, so buffers of nearly the same size share blocks.
constexpr std::size_t kCacheGranule = std::size_t(64) << 10;

// A block of at least `bytes` bytes (> 0): the smallest free block of capacity within 1.25x of
// the request, else a new one. Throws std::bad_alloc when the system has no memory.
CachedBlock cache_acquire(std::size_t bytes);
// Gives `block` back: kept for reuse while the free blocks stay within the limit.
void cache_release(CachedBlock block);

struct CacheStats {
  std::size_t free_bytes = 0;  // held by the cache, not in use
  std::size_t free_blocks = 0;
  std::size_t in_use_bytes = 0;  // acquired and not released
  std::uint64_t hits = 0;  // acquisitions served by a free block
  std::uint64_t misses = 0;  // acquisitions that allocated
};
CacheStats cache_stats();
// The most free bytes the cache keeps (0: none, every release frees); applied at once.
void cache_set_limit(std::size_t bytes);
std::size_t cache_limit();

}  // namespace host
}  // namespace fusedrnn
