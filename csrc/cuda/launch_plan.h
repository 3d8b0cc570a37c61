// Plain C++ (host and device) parts of the CUDA backend that the CPU can check:
//   * the tensor-core fragment layouts (which thread holds which matrix element), and
//   * the launch plan (grid, shared-memory layout, co-residency) from device properties.
// Compiled by nvcc for the kernels and by the host compiler for the bindings, so the CPU tests
// (tests/test_cuda_plan.py) exercise the very functions the kernels and the launcher use.
#pragma once

#include <cstdint>
#include <string>

#include "fusedrnn/hostdevice.h"

namespace fusedrnn {
namespace cuda {

constexpr int kThreads = 256;  // threads per block (8 warps)
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;
constexpr int kFwdUnitArrays = 5;  // h, c, c~, c_out, m_h
constexpr int kBwdUnitArrays = 9;  // dh, dc, dh_prev, dc_prev, dh~, dc~, dc_out, m_h, dh_in

// ------------------------------------------------------------------ tensor-core fragments
// mma.sync fragment layouts of the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
// floating point type" and "... mma.m16n8k8 ... .tf32"), per lane of the warp and element
// index e of the thread's fragment. groupID g = lane / 4, threadID_in_group q = lane % 4.
//
// m16n8k16, .bf16 / .f16 operands, f32 accumulators:
//   A (16 x 16, row-major, M x K): 4 .b32 registers = 8 elements; register j holds elements
//     2j (low half) and 2j+1 (high half).  e -> (row g + 8*((e>>1)&1), col 2q + (e&1) + 8*(e>>2))
//   B (16 x 8, "col": K x N):        2 registers = 4 elements, register j holds 2j, 2j+1.
//                                    e -> (k 2q + (e&1) + 8*(e>>1), n g)
// m16n8k8, .tf32 operands (one 32-bit element per register):
//   A (16 x 8):  e -> (row g + 8*(e&1), col q + 4*(e>>1))
//   B (8 x 8):   e -> (k q + 4*e, n g)
// Both shapes: C / D (16 x 8, f32): e -> (row g + 8*(e>>1), col 2q + (e&1)).
//
// So the two elements of one A or B register of m16n8k16 are adjacent in k: with W row-major
// [rows][k] and the operand X row-major [n][k] (B "col" = X's rows), each register is one
// aligned 32-bit load of two consecutive elements.
struct FragCoord {
  int row;  // A, C: row m; B: k
  int col;  // A: k; B, C: column n
};
FRNN_HD FragCoord mma_m16n8k16_a(int lane, int e) {
  return {lane / 4 + 8 * ((e >> 1) & 1), 2 * (lane % 4) + (e & 1) + 8 * (e >> 2)};
}
FRNN_HD FragCoord mma_m16n8k16_b(int lane, int e) {
  return {2 * (lane % 4) + (e & 1) + 8 * (e >> 1), lane / 4};
}
FRNN_HD FragCoord mma_m16n8k8_tf32_a(int lane, int e) {
  return {lane / 4 + 8 * (e & 1), lane % 4 + 4 * (e >> 1)};
}
FRNN_HD FragCoord mma_m16n8k8_tf32_b(int lane, int e) { return {lane % 4 + 4 * e, lane / 4}; }
FRNN_HD FragCoord mma_m16n8_c(int lane, int e) {
  return {lane / 4 + 8 * (e >> 1), 2 * (lane % 4) + (e & 1)};
}

// ------------------------------------------------------------------ the block product's tiling
// The recurrent product of one block, out[b][r] = sum_k X[b][k] * W[r][k] (forward: X = m_h h,
// W = the block's gate rows of W_hh, K = H; backward: X = d(a), W = W_hh[:, own units]^T,
// K = G*H), runs on 16 x 8 output tiles (16 rows of W by 8 batch rows). The batch is taken in
// blocks of kBatchBlock rows whose operand (fp32 X) is staged in shared memory by cp.async in
// chunks of k_chunk columns: the whole K at once (one copy per step) when it fits, else a
// double buffer of smaller chunks (the launch plan picks k_chunk). Warps split the tiles of a
// batch block; when there are fewer tiles than warps, `ksplit` warps share one tile and split
// its k-steps, and their partial accumulators are summed in a fixed order (deterministic).
constexpr int kKChunkMin = 32;   // k_chunk is a multiple of this (and so of every k-step)
constexpr int kStagePadBytes = 16;  // after each staged row: no shared-memory bank conflicts
constexpr int kBatchBlock = 64;  // batch rows per staged block (8 n-tiles)
constexpr int kTilesPerWarp = 4;  // accumulator tiles one warp holds at once
constexpr int kScratchFloats = kWarps * kWarp * 4;  // split-K partial accumulators
// The stage buffers' two 8-byte mbarriers and their parity word (sm_90's TMA staging,
// tensor_core.cuh StageBarriers), 16-byte aligned, right before the stage region.
constexpr int kStageBarrierBytes = 32;

// sm_90's TMA staging of one chunk (tensor_core.cuh bulk_stage_operand_chunk): of the
// rows8 = ceil(nbr / 8) * 8 staged rows x cols columns, batch rows r < nbr get one bulk copy
// of their first bulk_valid_cols elements (K - k0 at the last chunk); the rest is zero-filled
// in 16-byte vectors of per_vec elements, vector v < bulk_zero_vectors at bulk_zero_vector:
// first the k tails of the nbr rows, then the rows past nbr whole.
struct StageVec {
  int r;  // staged row
  int c;  // first column
};
FRNN_HD int bulk_valid_cols(int cols, int64_t K, int64_t k0) {
  return static_cast<int>(K - k0 < cols ? K - k0 : cols);
}
FRNN_HD int bulk_zero_vectors(int nbr, int cols, int valid, int per_vec) {
  const int rows8 = (nbr + 7) / 8 * 8;
  return nbr * ((cols - valid) / per_vec) + (rows8 - nbr) * (cols / per_vec);
}
FRNN_HD StageVec bulk_zero_vector(int v, int nbr, int cols, int valid, int per_vec) {
  const int tail = (cols - valid) / per_vec, vecs = cols / per_vec, n_tail = nbr * tail;
  if (v < n_tail) return {v / tail, valid + (v % tail) * per_vec};
  return {nbr + (v - n_tail) / vecs, ((v - n_tail) % vecs) * per_vec};
}

struct TileSplit {
  int tiles;   // 16 x 8 output tiles of this batch block
  int ksplit;  // warps per tile (1 when tiles >= warps)
  int slots;   // tiles in flight at once across the block's warps (kWarps / ksplit)
};
FRNN_HD TileSplit tile_split(int64_t rows, int64_t batch_rows) {
  TileSplit s;
  s.tiles = static_cast<int>(((rows + 15) / 16) * ((batch_rows + 7) / 8));
  s.ksplit = s.tiles >= kWarps ? 1 : kWarps / s.tiles;
  s.slots = kWarps / s.ksplit;
  return s;
}

// Who computes and who stores what in block_product_tc_each (tensor_core.cuh), the functions
// its k-loop and epilogue call. Within one batch block of nbr rows (split sp = tile_split(R,
// nbr)) the product runs in rounds t0 = 0, slots * kTilesPerWarp, ...; in a round warp w's
// i-th tile is tc_tile(sp, t0, w, i), whose A fragments are W rows [m0, m0 + 16) and B
// fragments batch rows [n0, n0 + 8) of the block (tc_tile_origin, m_tiles = ceil(R / 16)
// tiles down the rows). Only the k-part-0 warp of a tile stores (tc_stores), and accumulator
// element e of lane l of tile `tile` is out[b0 + n][r], (r, n) = tc_output(tile, R, l, e).
// Nothing here depends on the operand or the call: for given (B, R) the same thread holds
// (and stores) the same (b, r) on every call, which the fused backward relies on
// (step_loop.h product_and_cell_backward keeps per-(b, r) state thread-private).
struct TileOrigin {
  int m0;  // first W row (output column r) of the tile
  int n0;  // first batch row of the tile, within the batch block
};
FRNN_HD TileOrigin tc_tile_origin(int tile, int64_t R) {
  const int m_tiles = static_cast<int>((R + 15) / 16);
  return {(tile % m_tiles) * 16, (tile / m_tiles) * 8};
}
FRNN_HD int tc_tile(const TileSplit& sp, int t0, int warp, int i) {
  return t0 + warp / sp.ksplit + i * sp.slots;
}
FRNN_HD bool tc_stores(const TileSplit& sp, int tile, int warp) {
  return warp % sp.ksplit == 0 && tile < sp.tiles;
}
struct ProductOut {
  int r;  // row of W: the output column
  int n;  // batch row within the batch block
};
FRNN_HD ProductOut tc_output(int tile, int64_t R, int lane, int e) {
  const TileOrigin o = tc_tile_origin(tile, R);
  const FragCoord cc = mma_m16n8_c(lane, e);
  return {o.m0 + cc.row, o.n0 + cc.col};
}

// ------------------------------------------------------------------ the cell on the accumulators
// The forward's fast path (docs/kernels-v2.md §5.0, "cell on the accumulators"): the block's
// W_hh rows are ordered gate-interleaved per group of 8 units, so that the two-tile C fragment
// of one warp holds, in each thread, every gate of one unit for two batch columns. A group of
// 8 unit slots u0..u7 takes fused_cell_tiles(G) 16-row M tiles: row 8*g + u is gate g of unit
// slot u (LSTM: tiles [i | f], [g | o]; GRU: [r | z], [n | zero rows]; RNN: [a | zero rows]);
// slots past the block's hl units are zero rows. With the C layout (element e at row
// lane/4 + 8*(e>>1), batch column 2*(lane%4) + (e&1)), tile g/2 element 2*(g%2) + c of a lane
// is gate g of unit slot lane/4 at batch column 2*(lane%4) + c: the thread runs the whole cell
// of its unit for those two batch columns in registers, with no shared-memory round trip.
// A warp's work item is one (group, 8-column batch tile) with all its M tiles; when a batch
// block has fewer items than warps, `ksplit` warps share an item and split its k-steps (as
// the plain product does), summed in warp order before the cell.
constexpr int kFusedUnitsPerGroup = 8;
constexpr int kFusedMaxTiles = 2;  // M tiles per group for G <= 4
FRNN_HD int fused_cell_tiles(int64_t G) { return static_cast<int>((G + 1) / 2); }
FRNN_HD int64_t fused_cell_groups(int64_t hl) {
  return (hl + kFusedUnitsPerGroup - 1) / kFusedUnitsPerGroup;
}
// Rows of the block's gate-interleaved W_hh slice (zero padding rows included).
FRNN_HD int64_t fused_cell_rows(int64_t G, int64_t hl) {
  return fused_cell_groups(hl) * fused_cell_tiles(G) * 16;
}
struct FusedRow {
  int gate;      // -1: a zero padding row
  int64_t unit;  // the block's unit jj (< hl), -1 for padding
};
// Which gate of which of the block's units row `row` of the slice holds.
FRNN_HD FusedRow fused_cell_row(int64_t G, int64_t hl, int64_t row) {
  const int64_t per_group = fused_cell_tiles(G) * 16;
  const int gate = static_cast<int>((row % per_group) / kFusedUnitsPerGroup);
  const int64_t unit = (row / per_group) * kFusedUnitsPerGroup + row % kFusedUnitsPerGroup;
  if (gate >= G || unit >= hl) return {-1, -1};
  return {gate, unit};
}
// Where gate g of the thread's batch column c (0, 1) is among a work item's accumulators.
struct FusedAcc {
  int tile;  // M tile of the item (0 .. fused_cell_tiles(G) - 1)
  int e;     // accumulator element of that tile (C fragment index)
};
FRNN_HD FusedAcc fused_cell_acc(int g, int c) { return {g / 2, 2 * (g % 2) + c}; }
// The unit (of the block) and batch row (of the batch block) a lane's accumulators belong to.
FRNN_HD int64_t fused_cell_unit(int64_t group, int lane) {
  return group * kFusedUnitsPerGroup + lane / 4;
}
FRNN_HD int fused_cell_batch(int n_tile, int lane, int c) {
  return n_tile * 8 + 2 * (lane % 4) + c;
}
// Work items of one batch block (groups x 8-column batch tiles) and their split over warps;
// item i is group i % groups of batch tile i / groups.
FRNN_HD TileSplit fused_cell_split(int64_t groups, int64_t batch_rows) {
  TileSplit s;
  s.tiles = static_cast<int>(groups * ((batch_rows + 7) / 8));
  s.ksplit = s.tiles >= kWarps ? 1 : kWarps / s.tiles;
  s.slots = kWarps / s.ksplit;
  return s;
}

// ------------------------------------------------------------------ shared memory plan
// Dynamic shared memory of one block, in this order (each part 16-byte aligned):
//   [W slice: rows x w_ld elements, storage type, only when w_in_smem]
//   [stage barriers: kStageBarrierBytes (tensor cores), ending where the stages start]
//   [operand stages: stages x min(B8, kBatchBlock) x stage_ld operand elements (tensor cores)]
//   [split-K scratch: kScratchFloats floats, tensor cores only]
//   [B * G * hs floats: per-step gate pre-activations (fwd) / d(gates) (bwd)]
//   [unit_arrays * B * hs floats: per-unit state of the block's hidden units]
//   [2 * G * hs floats: column statistics]  [2 * B floats: row statistics]
// hs = ceil(H / grid) is the largest slice of hidden units a block owns. The W slice's rows
// are `rows` = G*hs (forward) or hs (backward) of K = H (forward) or G*H (backward) elements;
// for tensor cores each row is padded with zeros to a multiple of 16 plus 16 bytes (w_ld), so
// the k tail needs no guard and the 8 rows one A-fragment load touches fall in distinct banks.
// k_chunk = 0 plans the FMA product (no stages); else the operand columns per stage, with one
// stage when k_chunk covers K and two (a double buffer) otherwise; stage_ld = k_chunk + 16
// bytes of operand elements (operand_bytes: the forward's exchange of a 16-bit dtype is in
// that dtype when tensor cores run, the backward's d(a) is always fp32). `fused_cell` (the
// forward's cell on the accumulators; never with a projection) stores fused_cell_rows(G, hs)
// gate-interleaved rows, fused_cell_tiles(G) accumulator tiles of split-K scratch per thread,
// and no gate tile.
//
// With an LSTM projection (proj = P > 0; docs/kernels-v2.md §5.0) a block also owns h units
// [q0, q0 + pl), pl <= ps = ceil(P / grid), and:
//   * the forward product's K is P (h has P units); the backward product's rows are the ps h
//     units (d(a) W_hh[:, own h units], W_hh being [G*H, P]);
//   * the block's W_hr slice (only when w_in_smem) follows the W_hh slice at proj_w_off:
//     forward its ps rows W_hr[q0 + q][:] (K = H), backward its hs cell units' columns
//     W_hr[:, j0 + jj] transposed (K = P), padded as the W_hh slice (proj_w_ld);
//   * the projection's operand (forward o tanh(c_out) [B][H], backward d(h~) [B][P], both
//     fp32 in global memory) is staged in the same stage region in chunks of proj_k_chunk =
//     min(k_chunk, K rounded up to kKChunkMin) fp32 columns (one stage when that covers K, else
//     two), stage_ld proj_stage_ld: the region is the larger of the two products' needs;
//   * the unit arrays are max(hs, ps) floats per batch row (unit_ld), plus one: the forward's
//     projection output h_proj, the backward's d(o tanh c_out) of the cell units.
struct SmemPlan {
  int64_t w_ld, w_bytes, stages, stage_ld, bar_off, stage_off, scratch_off, a_off, unit_off,
      col_off, row_off, total;
  int64_t unit_ld;  // floats per batch row of each unit array: max(hs, ps)
  int64_t proj_w_ld, proj_w_off, proj_w_bytes, proj_k_chunk, proj_stages, proj_stage_ld;
};
FRNN_HD int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }
FRNN_HD int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
FRNN_HD int64_t staged_batch_rows(int64_t B) {
  const int64_t b8 = round_up(B, 8);
  return b8 < kBatchBlock ? b8 : kBatchBlock;
}
// K of the recurrent product: forward the units of h (P with a projection, else H), backward
// the G*H gate columns.
FRNN_HD int64_t product_k(int64_t G, int64_t H, bool backward, int64_t proj = 0) {
  return backward ? G * H : proj > 0 ? proj : H;
}
// K of the projection's product: forward h = W_hr (o tanh c_out) sums over the H cell units,
// backward d(o tanh c_out) = d(h~) W_hr over the P outputs.
FRNN_HD int64_t proj_product_k(int64_t H, bool backward, int64_t proj) {
  return backward ? proj : H;
}
FRNN_HD int64_t operand_bytes(int64_t storage_bytes, bool backward) {
  return !backward && storage_bytes == 2 ? 2 : 4;
}
FRNN_HD SmemPlan smem_plan(int64_t B, int64_t G, int64_t H, int64_t hs, int64_t storage_bytes,
                           bool w_in_smem, int64_t k_chunk, bool backward,
                           bool fused_cell = false, int64_t proj = 0, int64_t ps = 0) {
  const bool projection = proj > 0;
  const int64_t unit_arrays = (backward ? kBwdUnitArrays : kFwdUnitArrays) + (projection ? 1 : 0);
  const int64_t rows = backward     ? (projection ? ps : hs)
                       : fused_cell ? fused_cell_rows(G, hs)
                                    : G * hs;
  const int64_t K = product_k(G, H, backward, proj);
  const bool tensor_cores = k_chunk > 0;
  SmemPlan s;
  s.w_ld = tensor_cores ? round_up(K, 16) + 16 / storage_bytes : K;
  s.w_bytes = w_in_smem ? align16(rows * s.w_ld * storage_bytes) : 0;
  s.stages = !tensor_cores ? 0 : k_chunk >= K ? 1 : 2;
  const int64_t x_bytes = operand_bytes(storage_bytes, backward);
  s.stage_ld = k_chunk + kStagePadBytes / x_bytes;
  const int64_t stage_bytes = s.stages * staged_batch_rows(B) * s.stage_ld * x_bytes;
  // The projection: its W_hr slice after W_hh's, its fp32 operand chunks in the stage region.
  const int64_t proj_rows = backward ? hs : ps, proj_k = proj_product_k(H, backward, proj);
  s.proj_w_ld = !projection     ? 0
                : tensor_cores ? round_up(proj_k, 16) + 16 / storage_bytes
                               : proj_k;
  s.proj_w_off = s.w_bytes;
  s.proj_w_bytes = projection && w_in_smem ? align16(proj_rows * s.proj_w_ld * storage_bytes) : 0;
  const int64_t proj_k32 = round_up(proj_k, kKChunkMin);
  s.proj_k_chunk = projection && tensor_cores ? (k_chunk < proj_k32 ? k_chunk : proj_k32) : 0;
  s.proj_stages = s.proj_k_chunk == 0 ? 0 : s.proj_k_chunk >= proj_k ? 1 : 2;
  s.proj_stage_ld = s.proj_k_chunk + kStagePadBytes / 4;
  const int64_t proj_stage_bytes = s.proj_stages * staged_batch_rows(B) * s.proj_stage_ld * 4;
  s.bar_off = s.proj_w_off + s.proj_w_bytes;  // tensor_core.cuh stage_barriers(stage)
  s.stage_off = s.bar_off + (tensor_cores ? kStageBarrierBytes : 0);
  s.scratch_off =
      s.stage_off + align16(stage_bytes > proj_stage_bytes ? stage_bytes : proj_stage_bytes);
  const int64_t scratch_floats =
      !tensor_cores ? 0 : fused_cell ? kScratchFloats * fused_cell_tiles(G) : kScratchFloats;
  s.a_off = s.scratch_off + scratch_floats * 4;
  s.unit_ld = projection && ps > hs ? ps : hs;
  s.unit_off = s.a_off + (fused_cell ? 0 : align16(B * G * hs * 4));  // fused: no gate tile
  s.col_off = s.unit_off + align16(unit_arrays * B * s.unit_ld * 4);
  s.row_off = s.col_off + align16(2 * G * hs * 4);
  s.total = s.row_off + align16(2 * B * 4);
  return s;
}

// ------------------------------------------------------------------ launch plan
// What the plan needs to know of the device (cudaDeviceGetAttribute on the GPU; any values in
// the CPU tests).
struct DeviceLimits {
  int64_t sms = 0;
  int64_t smem_per_block_optin = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int64_t smem_per_sm = 0;           // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int64_t smem_reserved_per_block = 0;  // cudaDevAttrReservedSharedMemoryPerBlock (1 KiB)
  int64_t max_threads_per_sm = 0;
};

// Launch plan: grid size, where W lives, which product runs, and why it cannot launch.
struct LaunchPlan {
  int64_t grid = 0;
  int64_t hs = 0;
  int64_t ps = 0;  // h units per block with a projection (ceil(P / grid)), else 0
  bool w_in_smem = false;
  bool tensor_cores = false;  // the mma.sync product (needs w_in_smem)
  int64_t k_chunk = 0;        // operand columns per cp.async stage (tensor cores), else 0
  bool fused_cell = false;    // the cell on the accumulators (plan_fused_cell, _backward)
  int64_t smem_bytes = 0;
  std::string reason;  // empty when the plan can launch
};

// Picks the grid (at most one block per SM, at most one per hidden unit), keeps the block's
// W_hh slice in shared memory when it fits (tensor cores when wanted, with the largest operand
// chunk that fits: all of K in one stage, else halving double-buffered chunks down to
// kKChunkMin), else streams W from L2 with the FMA product; refuses with the reason when even
// that exceeds the device's shared memory, or when the grid cannot be co-resident
// (cooperative launch).
// With a projection (proj = P > 0) the W_hr slice is resident exactly when W_hh's is (both
// or neither) and its operand shares the stages (smem_plan).
inline LaunchPlan plan_launch_for(const DeviceLimits& d, int64_t B, int64_t G, int64_t H,
                                  int64_t storage_bytes, bool backward, bool want_tensor_cores,
                                  int64_t proj = 0) {
  const char* what = backward ? "backward" : "forward";
  LaunchPlan plan;
  plan.grid = H < d.sms ? H : d.sms;
  plan.hs = plan.grid > 0 ? (H + plan.grid - 1) / plan.grid : 0;
  plan.ps = proj > 0 && plan.grid > 0 ? (proj + plan.grid - 1) / plan.grid : 0;
  const int64_t ps = plan.ps;
  plan.w_in_smem = true;
  SmemPlan s = smem_plan(B, G, H, plan.hs, storage_bytes, true, 0, backward, false, proj, ps);
  if (want_tensor_cores) {
    for (int64_t k_chunk = round_up(product_k(G, H, backward, proj), kKChunkMin);;
         k_chunk = round_up(k_chunk / 2, kKChunkMin)) {
      const SmemPlan staged =
          smem_plan(B, G, H, plan.hs, storage_bytes, true, k_chunk, backward, false, proj, ps);
      if (staged.total <= d.smem_per_block_optin) {
        s = staged;
        plan.tensor_cores = true;
        plan.k_chunk = k_chunk;
        break;
      }
      if (k_chunk == kKChunkMin) break;  // the exact FMA product needs no operand stages
    }
  }
  if (s.total > d.smem_per_block_optin) {
    plan.w_in_smem = false;  // W_hh (and W_hr) slice streams from L2 instead
    s = smem_plan(B, G, H, plan.hs, storage_bytes, false, 0, backward, false, proj, ps);
  }
  plan.smem_bytes = s.total;
  if (s.total > d.smem_per_block_optin) {
    plan.reason = std::string("the ") + what + " kernel at batch " + std::to_string(B) +
                  " x hidden " + std::to_string(H) +
                  (proj > 0 ? " with proj_size " + std::to_string(proj) : std::string()) +
                  " needs " + std::to_string(s.total) +
                  " bytes of shared memory per block, the device allows " +
                  std::to_string(d.smem_per_block_optin);
    return plan;
  }
  const int64_t by_smem = d.smem_per_sm / (s.total + d.smem_reserved_per_block);
  const int64_t by_threads = d.max_threads_per_sm / kThreads;
  const int64_t per_sm = by_smem < by_threads ? by_smem : by_threads;
  if (per_sm * d.sms < plan.grid) {
    plan.reason = std::string("the ") + what + " kernel's grid of " +
                  std::to_string(plan.grid) + " blocks cannot be co-resident (" +
                  std::to_string(per_sm) + " block(s) per SM x " + std::to_string(d.sms) +
                  " SMs with " + std::to_string(s.total) + " bytes of shared memory each)";
  }
  return plan;
}

// The forward's tensor-core plan `base` with the cell on the accumulators, when its shared
// memory (same grid; the gate-interleaved W slice, no gate tile) fits with base's k_chunk or,
// halving it down to kKChunkMin, a smaller one (the padded W slice can be larger than the
// phased one when hs is not a multiple of 8), and the grid stays co-resident; else `base`
// unchanged. The caller decides that the step allows it (fused_cell_applies, step_loop.h: no
// norm, no projection).
inline LaunchPlan plan_fused_cell(const DeviceLimits& d, const LaunchPlan& base, int64_t B,
                                  int64_t G, int64_t H, int64_t storage_bytes) {
  if (!base.reason.empty() || !base.tensor_cores || !base.w_in_smem) return base;
  for (int64_t k_chunk = base.k_chunk;; k_chunk = round_up(k_chunk / 2, kKChunkMin)) {
    const SmemPlan s = smem_plan(B, G, H, base.hs, storage_bytes, true, k_chunk, false, true);
    if (s.total <= d.smem_per_block_optin) {
      const int64_t by_smem = d.smem_per_sm / (s.total + d.smem_reserved_per_block);
      const int64_t by_threads = d.max_threads_per_sm / kThreads;
      if ((by_smem < by_threads ? by_smem : by_threads) * d.sms < base.grid) return base;
      LaunchPlan plan = base;
      plan.fused_cell = true;
      plan.k_chunk = k_chunk;
      plan.smem_bytes = s.total;
      return plan;
    }
    if (k_chunk <= kKChunkMin) return base;
  }
}

// The backward's plan `base` with the cell backward on the accumulators (the product's C
// fragment already holds one d(h_{t-1}) value per (own unit, batch row): no reordered W slice,
// the same shared memory and grid), when base runs the tensor-core product on the resident W
// slice; else `base` unchanged. The caller decides that the step allows it
// (fused_cell_applies: no norm, no projection).
inline LaunchPlan plan_fused_cell_backward(const LaunchPlan& base) {
  if (!base.reason.empty() || !base.tensor_cores || !base.w_in_smem) return base;
  LaunchPlan plan = base;
  plan.fused_cell = true;
  return plan;
}

}  // namespace cuda
}  // namespace fusedrnn
