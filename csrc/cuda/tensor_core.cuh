// The recurrent product on tensor cores: named building blocks (copy, MMA atom, fragment
// loads, block product), each with the fragment layout it relies on (launch_plan.h states the
// layouts once, as functions the CPU tests check against a plain matrix product).
//
// Why raw `mma.sync` PTX (docs/kernels-v2.md §5.1): the epilogue here (and the cell, once it
// runs on the accumulators) must know which thread holds which (row, column) of an
// accumulator, which WMMA leaves unspecified; the PTX ISA documents the m16n8k16 / m16n8k8
// layouts, the atoms are a few lines each, and they need no third-party headers in the build
// (CuTe's SM80_16x8x16 atoms are the same instructions).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/kernel_common.cuh"
#include "cuda/launch_plan.h"

namespace fusedrnn {
namespace cuda {

// ------------------------------------------------------------------ copies
// 16 bytes global -> shared through L2 only (.cg: never a stale L1 line of data other blocks
// wrote during this launch); `valid` false writes 16 zero bytes (src-size 0).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Stages X[b0 + r][k0 + c] (fp32 or the 16-bit dtype, r < rows8, c < cols) into
// dst[r * ld + c], zero where r >= nbr or k0 + c >= K. With `vec16` (K and ldx multiples of
// 16 bytes of elements, X 16-byte aligned) each thread issues 16-byte cp.async copies
// (asynchronous: the caller commits and waits); otherwise it copies element-wise through L2
// (synchronous). cols and ld are multiples of 16 bytes of elements.
template <class X>
__device__ __forceinline__ void stage_operand_chunk(X* dst, int ld, int cols, const X* src,
                                                    int64_t ldx, int64_t b0, int nbr, int64_t K,
                                                    int64_t k0, bool vec16) {
  constexpr int kPerVec = 16 / sizeof(X);
  const int rows8 = (nbr + 7) / 8 * 8;
  if (vec16) {
    const int vecs = cols / kPerVec;
    for (int v = threadIdx.x; v < rows8 * vecs; v += blockDim.x) {
      const int r = v / vecs, c = (v % vecs) * kPerVec;
      const bool valid = r < nbr && k0 + c < K;
      cp_async_16(dst + r * ld + c, valid ? src + (b0 + r) * ldx + k0 + c : src, valid);
    }
  } else {
    for (int v = threadIdx.x; v < rows8 * cols; v += blockDim.x) {
      const int r = v / cols, c = v % cols;
      dst[r * ld + c] =
          (r < nbr && k0 + c < K) ? __ldcg(src + (b0 + r) * ldx + k0 + c) : from_acc<X>(0.f);
    }
  }
}

// ------------------------------------------------------------------ bulk copies (sm_90: TMA)
// On sm_90 the operand rows arrive through the TMA engine's 1-D bulk copy
// (cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes: no tensor map, sizes and
// both addresses multiples of 16 bytes), one copy per staged batch row (the rows of a chunk
// are ldx elements apart in global memory and stage_ld apart in shared memory, so they are
// not one contiguous segment), completing on the stage buffer's mbarrier. The barriers live
// in the kStageBarrierBytes just before the stage region (launch_plan.h smem_plan: stage_off
// = bar_off + kStageBarrierBytes), so every product that stages through for_each_staged_chunk
// finds them from its stage pointer. sm_80 keeps 16-byte cp.async per thread.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define FUSEDRNN_BULK_COPY 1
#else
#define FUSEDRNN_BULK_COPY 0
#endif

struct StageBarriers {
  uint64_t full[2];  // mbarrier of stage buffer i: one arrival (expect_tx) + the copies' bytes
  uint32_t parity;   // bit i: parity of full[i]'s next phase to complete (every thread's view
                     // at the start of a for_each_staged_chunk call)
};
static_assert(sizeof(StageBarriers) <= kStageBarrierBytes, "launch_plan.h reserves this");

__device__ __forceinline__ StageBarriers* stage_barriers(void* stage) {
  return reinterpret_cast<StageBarriers*>(static_cast<char*>(stage) - kStageBarrierBytes);
}

__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

#if FUSEDRNN_BULK_COPY
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals)
               : "memory");
}
// The one arrival of a phase, raising its expected transaction bytes first.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}
// Waits until the phase of the given parity completed (its bytes are then visible to the
// waiting thread).
__device__ __forceinline__ void mbarrier_wait_parity(uint64_t* bar, unsigned parity) {
  const unsigned addr = smem_addr(bar);
  unsigned done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  }
}
// One 1-D bulk copy global -> shared (bytes, both addresses multiples of 16), completing
// `bytes` transactions on bar. A CTA launched without clusters is its own cluster, so its
// shared::cta address is a valid shared::cluster one.
__device__ __forceinline__ void bulk_copy_g2s(void* smem_dst, const void* gmem_src,
                                              unsigned bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
      ::"r"(smem_addr(smem_dst)), "l"(gmem_src), "r"(bytes), "r"(smem_addr(bar))
      : "memory");
}
// Proxy fences: the bulk copy is an async-proxy access, the rest of the kernel's loads and
// stores are generic-proxy ones, and the memory model orders the two only through
// fence.proxy.async (docs/kernels-v2.md §4), one per state space: global (the exchange other
// blocks wrote with ordinary stores, seen through the grid barrier; SASS FENCE.VIEW.ASYNC.G)
// and shared (the stage buffer the block last read, or zero-filled, with ordinary accesses;
// FENCE.VIEW.ASYNC.S). The unqualified fence.proxy.async compiles to MEMBAR.ALL.GPU +
// FENCE.VIEW.ASYNC.S with nvcc 13 (no .G view fence), so the two are named explicitly.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

// Once per kernel, before any product, by every thread: thread 0 initialises both stage
// barriers (one arrival per phase) and the parity word; the fence makes the initialisation
// visible to the async proxy (the bulk copies' complete_tx). A no-op below sm_90.
__device__ __forceinline__ void init_stage_barriers(void* stage) {
#if FUSEDRNN_BULK_COPY
  if (threadIdx.x == 0) {
    StageBarriers* sb = stage_barriers(stage);
    mbarrier_init(&sb->full[0], 1);
    mbarrier_init(&sb->full[1], 1);
    sb->parity = 0;
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
#else
  (void)stage;
#endif
}

// stage_operand_chunk's vec16 form on sm_90: warp 0 issues one bulk copy per valid batch row
// (r < nbr: min(cols, K - k0) elements, a multiple of 16 bytes under vec16), lane 0 first
// arming `bar` with the chunk's total bytes; every thread zero-fills the rest of the rows8 x
// cols block (columns past K, rows past nbr) with ordinary stores, disjoint from the copies'
// bytes (launch_plan.h bulk_zero_vector; _C.bulk_stage_cover for the CPU test). Asynchronous:
// the caller waits on bar.
#if FUSEDRNN_BULK_COPY
template <class X>
__device__ __forceinline__ void bulk_stage_operand_chunk(X* dst, int ld, int cols, const X* src,
                                                         int64_t ldx, int64_t b0, int nbr,
                                                         int64_t K, int64_t k0, uint64_t* bar) {
  constexpr int kPerVec = 16 / sizeof(X);
  const int valid = bulk_valid_cols(cols, K, k0);
  const unsigned row_bytes = static_cast<unsigned>(valid) * sizeof(X);
  if (threadIdx.x < kWarp) {
    if (threadIdx.x == 0) mbarrier_arrive_expect_tx(bar, row_bytes * nbr);
    __syncwarp();
    // After the grid barrier's acquire (the exchange's ordinary stores) and the block barrier
    // (this buffer's last ordinary reads / zero-fills), before the async-proxy copies.
    fence_proxy_async_global();
    fence_proxy_async_shared();
    for (int r = threadIdx.x; r < nbr; r += kWarp)
      bulk_copy_g2s(dst + r * ld, src + (b0 + r) * ldx + k0, row_bytes, bar);
  }
  const int n_zero = bulk_zero_vectors(nbr, cols, valid, kPerVec);
  for (int v = threadIdx.x; v < n_zero; v += blockDim.x) {
    const StageVec z = bulk_zero_vector(v, nbr, cols, valid, kPerVec);
    *reinterpret_cast<uint4*>(dst + z.r * ld + z.c) = make_uint4(0, 0, 0, 0);
  }
  // These ordinary stores precede a later use's bulk copy into the same bytes.
  if (n_zero > 0) fence_proxy_async_shared();
}
#endif

// ------------------------------------------------------------------ MMA atoms
// D = A B + D, one warp, fragments as in launch_plan.h.
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4],
                                             const uint32_t b[2], __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4],
                                             const uint32_t b[2], __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// fp32 -> tf32 (round to nearest, ties away: what cuBLAS and cuDNN use).
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// Two floats -> one register of two 16-bit operands (lo = lower k).
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ------------------------------------------------------------------ fragment loads
// A fragment of rows [m0, m0+16) x columns [k, k+kStep) of the W slice in shared memory
// (row-major, w_ld elements per row, zero-padded in k); rows >= R read as zero.
template <class S>
__device__ __forceinline__ void load_a_fragment(uint32_t a[4], const S* w_sm, int64_t w_ld,
                                                int m0, int64_t k, int R, int lane) {
  if constexpr (std::is_same<S, float>::value) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const FragCoord c = mma_m16n8k8_tf32_a(lane, e);
      const int row = m0 + c.row;
      a[e] = row < R ? to_tf32(w_sm[row * w_ld + k + c.col]) : 0u;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const FragCoord c = mma_m16n8k16_a(lane, 2 * j);  // and 2j+1 at col + 1
      const int row = m0 + c.row;
      a[j] = row < R ? *reinterpret_cast<const uint32_t*>(w_sm + row * w_ld + k + c.col) : 0u;
    }
  }
}

// B fragment of the staged operand: batch rows [n0, n0+8) of the stage buffer (ld elements
// per row), stage columns [kk, kk+kStep). A stage of 16-bit elements (X = S) holds the
// operands as they are; an fp32 stage of a 16-bit product is rounded here.
template <class S, class X>
__device__ __forceinline__ void load_b_fragment(uint32_t b[2], const X* xs, int ld, int n0,
                                                int kk, int lane) {
  if constexpr (!std::is_same<X, float>::value) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const FragCoord c = mma_m16n8k16_b(lane, 2 * j);  // and 2j+1 at k + 1
      b[j] = *reinterpret_cast<const uint32_t*>(xs + (n0 + c.col) * ld + kk + c.row);
    }
  } else if constexpr (std::is_same<S, float>::value) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const FragCoord c = mma_m16n8k8_tf32_b(lane, e);
      b[e] = to_tf32(xs[(n0 + c.col) * ld + kk + c.row]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const FragCoord c = mma_m16n8k16_b(lane, 2 * j);  // and 2j+1 at k + 1
      const float2 v = *reinterpret_cast<const float2*>(xs + (n0 + c.col) * ld + kk + c.row);
      b[j] = pack2(v.x, v.y, S());
    }
  }
}

template <class S>
__device__ __forceinline__ void mma_step(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (std::is_same<S, float>::value) {
    mma_m16n8k8_tf32(d, a, b);
  } else {
    mma_m16n8k16(d, a, b, S());
  }
}

// ------------------------------------------------------------------ the operand's chunk loop
// The k-loop over the operand's chunks that both products run for one batch block (rows b0 ..
// b0 + nbr of X): stages chunk 0, then for each chunk c < chunks stages chunk c + 1 into the
// other buffer (the double buffer; stage_elems elements each) while waiting for chunk c,
// and calls body(xs, c) on the staged chunk between two __syncthreads (the second because
// the buffer is restaged for chunk c + 2, or the next round). x null: nothing is staged and
// body is never called (a zero operand). Every thread of the block calls this.
// The copies: on sm_90 with vec16, TMA bulk copies (bulk_stage_operand_chunk), buffer i
// completing on stage_barriers(stage)->full[i], whose phase parities every thread tracks from
// the shared parity word (thread 0 stores the call's final parities between the last chunk's
// two __syncthreads, after every thread read the word and before any thread of the next call
// reads it); else cp.async per thread (commit groups) or the synchronous element-wise copy.
template <class X, class Body>
__device__ __forceinline__ void for_each_staged_chunk(const X* x, int64_t ldx, bool vec16,
                                                      int64_t b0, int nbr, int64_t K,
                                                      int k_chunk, int stage_ld,
                                                      int stage_elems, X* stage, Body body) {
  if (x == nullptr) return;
  const int chunks = static_cast<int>((K + k_chunk - 1) / k_chunk);
#if FUSEDRNN_BULK_COPY
  const bool bulk = vec16;  // the TMA form: each buffer's chunk completes on its mbarrier
  StageBarriers* sb = stage_barriers(stage);
  unsigned parity = bulk ? sb->parity : 0u;  // every thread reads it before chunk 0's sync
#else
  constexpr bool bulk = false;
#endif
  // Chunk c into buffer c & 1.
  auto stage_chunk = [&](int c) {
    X* dst = stage + (c & 1) * stage_elems;
    const int64_t k0 = static_cast<int64_t>(c) * k_chunk;
#if FUSEDRNN_BULK_COPY
    if (bulk) {
      bulk_stage_operand_chunk(dst, stage_ld, k_chunk, x, ldx, b0, nbr, K, k0, &sb->full[c & 1]);
      return;
    }
#endif
    stage_operand_chunk(dst, stage_ld, k_chunk, x, ldx, b0, nbr, K, k0, vec16);
    cp_async_commit();
  };
  stage_chunk(0);
  for (int c = 0; c < chunks; ++c) {
    const bool next = c + 1 < chunks;
    if (next) stage_chunk(c + 1);
#if FUSEDRNN_BULK_COPY
    if (bulk) {
      mbarrier_wait_parity(&sb->full[c & 1], (parity >> (c & 1)) & 1u);
      parity ^= 1u << (c & 1);
    }
#endif
    if (!bulk) {
      if (next) {
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
    }
    __syncthreads();  // every thread's copies (and zero-fills); every thread read sb->parity
#if FUSEDRNN_BULK_COPY
    if (bulk && !next && threadIdx.x == 0) sb->parity = parity;  // for the next call
#endif
    body(static_cast<const X*>(stage + (c & 1) * stage_elems), c);
    __syncthreads();
  }
}

// ------------------------------------------------------------------ the block product
// out[b * R + r] = sum_{k < K} X[b * ldx + k] * W[r][k] for b < B, r < R, on tensor cores:
// bf16 / fp16 operands (m16n8k16) or TF32 (m16n8k8, S = float), fp32 accumulation. W is the
// block's resident slice in shared memory (w_sm, w_ld, zero-padded in k); X was written by
// other blocks (fp32, or S for a 16-bit S) and arrives through `stage` (plan.stages buffers of
// plan.stage_ld elements per batch row) in chunks of k_chunk columns: one cp.async copy of all of K per batch block when
// k_chunk covers K, else a double buffer. `scratch` holds kScratchFloats floats for the
// split-K partials. Every thread of the block calls this (it contains __syncthreads); `out`
// is complete when it returns.
// block_product_tc_each is the same product with the epilogue `store(b, r, v)` called on each
// result (b < B, r < R) by the thread whose accumulator holds it (launch_plan.h tc_tile,
// tc_stores, tc_output: the same thread for the same (b, r) on every call with the same B and
// R; _C.tc_product_owners enumerates them for the CPU tests), and x null meaning a
// zero operand (no copies, no MMA: every store gets v = 0). block_product_tc stores into out.
template <class S, class X, class Store>
__device__ __forceinline__ void block_product_tc_each(int64_t B, int R, int64_t K, const X* x,
                                                      int64_t ldx, bool vec16, const S* w_sm,
                                                      int64_t w_ld, int k_chunk, int stage_ld,
                                                      X* stage, float* scratch, Store store) {
  static_assert(std::is_same<X, float>::value || std::is_same<X, S>::value,
                "the operand is fp32 or the product's own 16-bit dtype");
  constexpr int kStep = std::is_same<S, float>::value ? 8 : 16;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t k_end = round_up(K, kStep);
  const int steps_per_chunk = k_chunk / kStep;
  const int stage_elems = static_cast<int>(staged_batch_rows(B)) * stage_ld;
  for (int64_t b0 = 0; b0 < B; b0 += kBatchBlock) {
    const int nbr = static_cast<int>(B - b0 < kBatchBlock ? B - b0 : kBatchBlock);
    const TileSplit sp = tile_split(R, nbr);
    const int kpart = warp % sp.ksplit;
    for (int t0 = 0; t0 < sp.tiles; t0 += sp.slots * kTilesPerWarp) {
      float acc[kTilesPerWarp][4];
#pragma unroll
      for (int i = 0; i < kTilesPerWarp; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

      for_each_staged_chunk(x, ldx, vec16, b0, nbr, K, k_chunk, stage_ld, stage_elems, stage,
                            [&](const X* xs, int c) {
        // k-step j of the whole product belongs to k part j % ksplit.
        const int first = ((kpart - c * steps_per_chunk) % sp.ksplit + sp.ksplit) % sp.ksplit;
        for (int step = first; step < steps_per_chunk; step += sp.ksplit) {
          const int kk = step * kStep;
          const int64_t k = static_cast<int64_t>(c) * k_chunk + kk;
          if (k >= k_end) break;
#pragma unroll
          for (int i = 0; i < kTilesPerWarp; ++i) {
            const int tile = tc_tile(sp, t0, warp, i);
            if (tile < sp.tiles) {
              const TileOrigin o = tc_tile_origin(tile, R);
              uint32_t a[4], b[2];
              load_a_fragment(a, w_sm, w_ld, o.m0, k, R, lane);
              load_b_fragment<S>(b, xs, stage_ld, o.n0, kk, lane);
              mma_step<S>(acc[i], a, b);
            }
          }
        }
      });

      // Epilogue: accumulators -> out[b][r] (C fragment layout), split-K partials summed in
      // warp order.
      if (sp.ksplit > 1) {
#pragma unroll
        for (int e = 0; e < 4; ++e) scratch[(warp * kWarp + lane) * 4 + e] = acc[0][e];
        __syncthreads();
      }
#pragma unroll
      for (int i = 0; i < kTilesPerWarp; ++i) {
        const int tile = tc_tile(sp, t0, warp, i);
        if (!tc_stores(sp, tile, warp)) continue;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float v = acc[i][e];
          for (int part = 1; part < sp.ksplit; ++part)
            v += scratch[((warp + part) * kWarp + lane) * 4 + e];
          const ProductOut o = tc_output(tile, R, lane, e);
          if (o.r < R && o.n < nbr) store(b0 + o.n, o.r, v);
        }
      }
      if (sp.ksplit > 1) __syncthreads();  // scratch is rewritten by the next round
    }
  }
}

template <class S, class X>
__device__ void block_product_tc(int64_t B, int R, int64_t K, const X* x, int64_t ldx,
                                 bool vec16, const S* w_sm, int64_t w_ld, int k_chunk,
                                 int stage_ld, float* out, X* stage, float* scratch) {
  block_product_tc_each(B, R, K, x, ldx, vec16, w_sm, w_ld, k_chunk, stage_ld, stage, scratch,
                        [&](int64_t b, int r, float v) { out[b * R + r] = v; });
}

// ------------------------------------------------------------------ the product with the cell
// The forward's product with the cell on its accumulators (launch_plan.h "the cell on the
// accumulators"): w_sm holds the block's fused_cell_rows(G, hl) gate-interleaved rows; each
// warp's work item is one 8-unit group x one 8-column batch tile with its fused_cell_tiles(G)
// M tiles (sharing each B fragment), the operand staged as in block_product_tc. After the
// k-loop (and the split-K partials summed in warp order) each thread of the item's k-part-0
// warp calls cell(b, jj, rec) for its unit jj = fused_cell_unit(group, lane) and its two batch
// rows b, rec[g] = gate g's accumulator (fused_cell_acc): the rest of the step runs in
// registers and stores h_t straight to the exchange. `scratch` holds kScratchFloats *
// fused_cell_tiles(G) floats. Every thread of the block calls this (it contains
// __syncthreads); each (b < B, jj < hl) gets exactly one cell call.
template <class S, class X, class Cell>
__device__ __forceinline__ void block_product_cell_tc(int64_t B, int G, int hl, int64_t K,
                                                      const X* x, int64_t ldx, bool vec16,
                                                      const S* w_sm, int64_t w_ld, int k_chunk,
                                                      int stage_ld, X* stage, float* scratch,
                                                      Cell cell) {
  static_assert(std::is_same<X, float>::value || std::is_same<X, S>::value,
                "the operand is fp32 or the product's own 16-bit dtype");
  constexpr int kStep = std::is_same<S, float>::value ? 8 : 16;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t k_end = round_up(K, kStep);
  const int steps_per_chunk = k_chunk / kStep;
  const int tiles = fused_cell_tiles(G);
  const int groups = static_cast<int>(fused_cell_groups(hl));
  const int R = static_cast<int>(fused_cell_rows(G, hl));
  const int stage_elems = static_cast<int>(staged_batch_rows(B)) * stage_ld;
  for (int64_t b0 = 0; b0 < B; b0 += kBatchBlock) {
    const int nbr = static_cast<int>(B - b0 < kBatchBlock ? B - b0 : kBatchBlock);
    const TileSplit sp = fused_cell_split(groups, nbr);
    const int slot = warp / sp.ksplit, kpart = warp % sp.ksplit;
    for (int i0 = 0; i0 < sp.tiles; i0 += sp.slots) {
      const int item = i0 + slot;
      const bool busy = item < sp.tiles;
      const int group = item % groups, n_tile = item / groups;
      float acc[kFusedMaxTiles][4];
#pragma unroll
      for (int i = 0; i < kFusedMaxTiles; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;

      for_each_staged_chunk(x, ldx, vec16, b0, nbr, K, k_chunk, stage_ld, stage_elems, stage,
                            [&](const X* xs, int c) {
        const int first = ((kpart - c * steps_per_chunk) % sp.ksplit + sp.ksplit) % sp.ksplit;
        for (int step = busy ? first : steps_per_chunk; step < steps_per_chunk;
             step += sp.ksplit) {
          const int kk = step * kStep;
          const int64_t k = static_cast<int64_t>(c) * k_chunk + kk;
          if (k >= k_end) break;
          uint32_t b[2];
          load_b_fragment<S>(b, xs, stage_ld, n_tile * 8, kk, lane);
#pragma unroll
          for (int i = 0; i < kFusedMaxTiles; ++i) {
            if (i < tiles) {
              uint32_t a[4];
              load_a_fragment(a, w_sm, w_ld, (group * tiles + i) * 16, k, R, lane);
              mma_step<S>(acc[i], a, b);
            }
          }
        }
      });

      // Split-K partials summed in warp order, then the cell on the accumulators.
      if (sp.ksplit > 1) {
#pragma unroll
        for (int i = 0; i < kFusedMaxTiles; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (i < tiles) scratch[((warp * kWarp + lane) * tiles + i) * 4 + e] = acc[i][e];
        __syncthreads();
        if (busy && kpart == 0)
          for (int part = 1; part < sp.ksplit; ++part)
#pragma unroll
            for (int i = 0; i < kFusedMaxTiles; ++i)
#pragma unroll
              for (int e = 0; e < 4; ++e)
                if (i < tiles)
                  acc[i][e] += scratch[(((warp + part) * kWarp + lane) * tiles + i) * 4 + e];
      }
      const int64_t jj = fused_cell_unit(group, lane);
      if (busy && kpart == 0 && jj < hl) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int n = fused_cell_batch(n_tile, lane, c);
          if (n < nbr) {
            float rec[4];
#pragma unroll
            for (int g = 0; g < 4; ++g) {
              const FusedAcc f = fused_cell_acc(g, c);
              rec[g] = g < G ? acc[f.tile][f.e] : 0.f;
            }
            cell(b0 + n, jj, rec);
          }
        }
      }
      if (sp.ksplit > 1) __syncthreads();  // scratch is rewritten by the next round
    }
  }
}

}  // namespace cuda
}  // namespace fusedrnn
