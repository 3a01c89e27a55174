/*
 * Criss-cross attention CUDA kernels (design notes in README.md, "Kernel design").
 *
 * The op is computed one spatial axis at a time, in two kernels per axis:
 *
 *   1. energyStatsKernel: for a block of pixels, the energies q.k against every key of their
 *      line along the axis, then the softmax statistics of each pixel's row (max, sum of exp)
 *      and the row numerators exp(e - max) -> workspace (element type of the op, zero padded).
 *   2. aggregate*Kernel: out[c, x] (+)= sum_y v[c, y] * p[x, y] per line, where p is the stored
 *      numerator times the pixel's joint-softmax weight for this axis (crissCrossAttentionMath.h,
 *      jointScale). The first axis writes its sum, the others add to it: in fp32 throughout
 *      (for fp16, through an fp32 partial buffer in the workspace, so the output is rounded to
 *      fp16 once, by the last axis).
 *
 * Because every axis keeps its own statistics and the joint softmax is only applied while
 * loading probabilities in kernel 2, the (B, HW, H + W - 1) map is written and read once, and
 * no raw energies are stored. Per line, both kernels are small GEMMs whose operands are strided
 * views of NCHW memory: for the innermost axis the keys are contiguous; for the others
 * consecutive lines are contiguous, so blocks take several lines at once and load along them.
 */
#include "crissCrossAttentionKernel.h"
#include "crissCrossAttentionMath.h"

#include <atomic>
#include <cstdint>
#include <mma.h>

namespace ccnet
{
namespace cca
{
namespace
{

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kDefaultSharedBytes = 48 * 1024;

__device__ __forceinline__ float toFloat(float x)
{
    return x;
}

__device__ __forceinline__ float toFloat(__half x)
{
    return __half2float(x);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float x);

template <>
__device__ __forceinline__ float fromFloat<float>(float x)
{
    return x;
}

template <>
__device__ __forceinline__ __half fromFloat<__half>(float x)
{
    return __float2half_rn(x);
}

//! Two fp16 values packed in 32 bits, each multiplied by `weight` in fp32 and rounded back.
__device__ __forceinline__ unsigned scaleHalfPair(unsigned packed, float weight)
{
    float const low = __half2float(__ushort_as_half(static_cast<unsigned short>(packed & 0xffffu))) * weight;
    float const high = __half2float(__ushort_as_half(static_cast<unsigned short>(packed >> 16))) * weight;
    return static_cast<unsigned>(__half_as_ushort(__float2half_rn(low)))
        | (static_cast<unsigned>(__half_as_ushort(__float2half_rn(high))) << 16);
}

__device__ __forceinline__ float warpMax(float value)
{
    for (int offset = 16; offset > 0; offset >>= 1)
    {
        value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
    return value;
}

__device__ __forceinline__ float warpSum(float value)
{
    for (int offset = 16; offset > 0; offset >>= 1)
    {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
}

int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! Where one block works: a run of consecutive lines (inner0 ...) of one (batch, outer), a run
//! of positions (pos0 ...) along the axis and, for aggregation, a run of channels.
struct BlockTile
{
    int64_t batch;
    int64_t outer;
    int64_t inner0;
    int pos0;
    int channel0;
};

//! Decodes blockIdx.x: positions vary fastest, then channels, then lines, then (batch, outer),
//! so the blocks that share a line's values or probabilities run close together (L2 reuse).
__device__ __forceinline__ BlockTile decodeTile(
    Axis const& a, int positionsPerTile, int linesPerTile, int channelTiles, int channelsPerTile)
{
    int64_t tile = blockIdx.x;
    int const positionTiles = (a.length + positionsPerTile - 1) / positionsPerTile;
    int64_t const lineTiles = (a.inner + linesPerTile - 1) / linesPerTile;
    BlockTile bt{};
    bt.pos0 = static_cast<int>(tile % positionTiles) * positionsPerTile;
    tile /= positionTiles;
    bt.channel0 = static_cast<int>(tile % channelTiles) * channelsPerTile;
    tile /= channelTiles;
    bt.inner0 = (tile % lineTiles) * linesPerTile;
    tile /= lineTiles;
    bt.outer = tile % a.outer;
    bt.batch = tile / a.outer;
    return bt;
}

// ---------------------------------------------------------------------------------------------
// Kernel 1: energies, per-axis softmax statistics and numerators.
// ---------------------------------------------------------------------------------------------

//! 64 pixels per block (kLines lines x kPositions positions), keys in tiles of 64, channels in
//! chunks of kChannels through shared memory; each thread computes 4 positions x 4 keys of one
//! line.
template <int Lines, int Positions, int Channels = 8>
struct EnergyConfig
{
    static constexpr int kLines = Lines;
    static constexpr int kPositions = Positions;
    static constexpr int kPixels = Lines * Positions;
    static constexpr int kKeys = 64;
    static constexpr int kChannels = Channels;
    static constexpr int kPositionGroups = Positions / 4;
    static constexpr int kKeyGroups = kKeys / 4;
    static constexpr int kKeyRow = kKeys + 1; // odd row length: no bank conflicts across lines
    static_assert(kPixels == 64, "the row reductions assume 64 pixels per block");
    static_assert(Lines * kPositionGroups * kKeyGroups == kThreads, "one 4x4 micro-tile per thread");

    //! Floats of shared memory for an energy buffer rows of `rowStride` floats.
    static constexpr size_t sharedFloats(int rowStride)
    {
        return static_cast<size_t>(kChannels * kPixels + kChannels * kLines * kKeyRow + 2 * kPixels)
            + static_cast<size_t>(kPixels) * static_cast<size_t>(rowStride);
    }
};

//! Innermost axis (keys contiguous in memory): one line, 64 positions, loads run along keys.
using EnergyInnermost = EnergyConfig<1, 64>;
//! Other axes: neighbouring lines (contiguous in memory) x positions, loads run along lines, so
//! a warp reads whole 32-byte sectors: 8 lines of fp32, 16 lines of fp16 (4 channels per chunk
//! keep the shared key tile at the fp32 size).
template <typename T>
struct EnergyStridedFor
{
    using type = EnergyConfig<8, 8>;
};
template <>
struct EnergyStridedFor<__half>
{
    using type = EnergyConfig<16, 4, 4>;
};

template <typename T, typename Cfg>
struct EnergyBlock
{
    T const* q;
    T const* k;
    Axis axis;
    BlockTile tile;
    int64_t plane;
    int qkChannels;
    int axisIndex;
    int numAxes;
    float* qs;
    float* ks;

    //! Energies of this block's pixels against keys [y0, y0 + 64) into dst[pixel * stride + j]
    //! (j = key - y0); masked keys get -inf, keys past the line are not written.
    __device__ void computeTile(int y0, float* dst, int stride) const
    {
        constexpr int kL = Cfg::kLines;
        constexpr int kX = Cfg::kPositions;
        int const t = threadIdx.x;
        int const ty = t % Cfg::kKeyGroups;
        int const tx = (t / Cfg::kKeyGroups) % Cfg::kPositionGroups;
        int const tr = t / (Cfg::kKeyGroups * Cfg::kPositionGroups);
        int const length = axis.length;
        int64_t const lineBase = tile.outer * length * axis.inner + tile.inner0;

        float acc[4][4] = {};
        // Everyone is done with the previous tile's energies (and with qs / ks), even when the
        // channel loop below does not run at all (Cq = 0).
        __syncthreads();
        for (int c0 = 0; c0 < qkChannels; c0 += Cfg::kChannels)
        {
            if (c0 > 0)
            {
                __syncthreads(); // the previous chunk's readers are done with qs / ks
            }
            for (int e = t; e < Cfg::kChannels * Cfg::kPixels; e += kThreads)
            {
                int const r = e % kL;
                int const x = (e / kL) % kX;
                int const c = e / Cfg::kPixels;
                float value = 0.f;
                if (c0 + c < qkChannels && tile.pos0 + x < length && tile.inner0 + r < axis.inner)
                {
                    value = toFloat(q[(c0 + c) * plane + lineBase + (tile.pos0 + x) * axis.inner + r]);
                }
                qs[c * Cfg::kPixels + r * kX + x] = value;
            }
            for (int e = t; e < Cfg::kChannels * kL * Cfg::kKeys; e += kThreads)
            {
                int const r = e % kL;
                int const y = (e / kL) % Cfg::kKeys;
                int const c = e / (kL * Cfg::kKeys);
                float value = 0.f;
                if (c0 + c < qkChannels && y0 + y < length && tile.inner0 + r < axis.inner)
                {
                    value = toFloat(k[(c0 + c) * plane + lineBase + static_cast<int64_t>(y0 + y) * axis.inner + r]);
                }
                ks[(c * kL + r) * Cfg::kKeyRow + y] = value;
            }
            __syncthreads();
#pragma unroll
            for (int c = 0; c < Cfg::kChannels; ++c)
            {
                float qv[4];
                float kv[4];
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
                    qv[i] = qs[c * Cfg::kPixels + tr * kX + tx + Cfg::kPositionGroups * i];
                    kv[i] = ks[(c * kL + tr) * Cfg::kKeyRow + ty + Cfg::kKeyGroups * i];
                }
#pragma unroll
                for (int i = 0; i < 4; ++i)
                {
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                    {
                        acc[i][j] = fmaf(qv[i], kv[j], acc[i][j]);
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            int const x = tx + Cfg::kPositionGroups * i;
#pragma unroll
            for (int j = 0; j < 4; ++j)
            {
                int const y = ty + Cfg::kKeyGroups * j;
                if (y0 + y < length)
                {
                    bool const masked = isMaskedKey(axisIndex, numAxes, tile.pos0 + x, y0 + y);
                    dst[(tr * kX + x) * stride + y] = masked ? negativeInfinity<float>() : acc[i][j];
                }
            }
        }
    }
};

//! Merges the statistics of `count` energies per pixel row (src[pixel * stride + j]) into
//! rowMax / rowSum; one warp per row.
template <typename Cfg>
__device__ void accumulateRowStats(float const* src, int stride, int count, float* rowMax, float* rowSum)
{
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x % 32;
    for (int p = warp; p < Cfg::kPixels; p += kWarps)
    {
        float const* row = src + p * stride;
        float max = negativeInfinity<float>();
        for (int j = lane; j < count; j += 32)
        {
            max = fmaxf(max, row[j]);
        }
        max = warpMax(max);
        float sum = 0.f;
        for (int j = lane; j < count; j += 32)
        {
            sum += shiftedExp(row[j], max);
        }
        sum = warpSum(sum);
        if (lane == 0)
        {
            RowStats<float> const merged
                = mergeStats(RowStats<float>{rowMax[p], rowSum[p]}, RowStats<float>{max, sum});
            rowMax[p] = merged.max;
            rowSum[p] = merged.sum;
        }
    }
}

template <typename T, typename Cfg>
__global__ void __launch_bounds__(kThreads) energyStatsKernel(T const* __restrict__ q, T const* __restrict__ k,
    T* __restrict__ probs, RowStats<float>* __restrict__ stats, Problem problem, int axisIndex, bool fullRow)
{
    extern __shared__ float smem[];
    constexpr int kX = Cfg::kPositions;
    Axis const axis = axisOf(problem, axisIndex);
    int const length = axis.length;
    int64_t const plane = spatialSize(problem);

    EnergyBlock<T, Cfg> block{};
    block.axis = axis;
    block.tile = decodeTile(axis, kX, Cfg::kLines, 1, 0);
    block.plane = plane;
    block.qkChannels = problem.qkChannels;
    block.axisIndex = axisIndex;
    block.numAxes = problem.numAxes;
    int64_t const qkBase = block.tile.batch * problem.qkChannels * plane;
    block.q = q + qkBase;
    block.k = k + qkBase;
    block.qs = smem;
    block.ks = block.qs + Cfg::kChannels * Cfg::kPixels;
    float* rowMax = block.ks + Cfg::kChannels * Cfg::kLines * Cfg::kKeyRow;
    float* rowSum = rowMax + Cfg::kPixels;
    float* energies = rowSum + Cfg::kPixels;

    int const t = threadIdx.x;
    if (t < Cfg::kPixels)
    {
        rowMax[t] = negativeInfinity<float>();
        rowSum[t] = 0.f;
    }

    int const warp = t / 32;
    int const lane = t % 32;
    BlockTile const& bt = block.tile;
    // Writes exp(e - max) for keys [y0, y0 + count) from src[pixel * stride + j].
    auto writeNumerators = [&](float const* src, int stride, int y0, int count) {
        for (int p = warp; p < Cfg::kPixels; p += kWarps)
        {
            int const x = p % kX;
            int const r = p / kX;
            if (bt.pos0 + x >= length || bt.inner0 + r >= axis.inner)
            {
                continue;
            }
            T* row = probs + probabilityRow(axis, lineIndex(axis, bt.batch, bt.outer, bt.inner0 + r), bt.pos0 + x) + y0;
            float const max = rowMax[p];
            for (int j = lane; j < count; j += 32)
            {
                row[j] = fromFloat<T>(shiftedExp(src[p * stride + j], max));
            }
        }
    };

    if (fullRow)
    {
        // Whole rows stay in shared memory: one pass over the keys.
        int const stride = length | 1;
        for (int y0 = 0; y0 < length; y0 += Cfg::kKeys)
        {
            block.computeTile(y0, energies + y0, stride);
        }
        __syncthreads();
        accumulateRowStats<Cfg>(energies, stride, length, rowMax, rowSum);
        __syncthreads();
        writeNumerators(energies, stride, 0, length);
    }
    else
    {
        // Rows too long for shared memory: statistics first, then recompute and write.
        int const stride = Cfg::kKeyRow;
        for (int y0 = 0; y0 < length; y0 += Cfg::kKeys)
        {
            block.computeTile(y0, energies, stride);
            __syncthreads();
            accumulateRowStats<Cfg>(energies, stride, min(Cfg::kKeys, length - y0), rowMax, rowSum);
        }
        for (int y0 = 0; y0 < length; y0 += Cfg::kKeys)
        {
            block.computeTile(y0, energies, stride); // starts with a barrier: stats are final
            __syncthreads();
            writeNumerators(energies, stride, y0, min(Cfg::kKeys, length - y0));
        }
    }

    // Zero padding of every row (the tensor-core tiles read it) and the row statistics.
    for (int p = warp; p < Cfg::kPixels; p += kWarps)
    {
        int const x = p % kX;
        int const r = p / kX;
        if (bt.pos0 + x >= length || bt.inner0 + r >= axis.inner)
        {
            continue;
        }
        T* row = probs + probabilityRow(axis, lineIndex(axis, bt.batch, bt.outer, bt.inner0 + r), bt.pos0 + x);
        for (int j = length + lane; j < axis.keyStride; j += 32)
        {
            row[j] = fromFloat<T>(0.f);
        }
        if (lane == 0)
        {
            int64_t const spatial = spatialOffset(axis, bt.outer, bt.pos0 + x, bt.inner0 + r);
            stats[statsIndex(problem, bt.batch, spatial, axisIndex)] = RowStats<float>{rowMax[p], rowSum[p]};
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2: aggregation out[c, x] (+)= sum_y v[c, y] * p[x, y].
// ---------------------------------------------------------------------------------------------

//! Joint-softmax weights of this block's pixels for this axis into scale[line * Positions + pos].
template <int Lines, int Positions>
__device__ void loadJointScales(
    float* scale, RowStats<float> const* stats, Problem const& problem, Axis const& axis, int axisIndex, BlockTile const& bt)
{
    for (int e = threadIdx.x; e < Lines * Positions; e += kThreads)
    {
        int const r = e / Positions;
        int const x = e % Positions;
        float value = 0.f;
        if (bt.pos0 + x < axis.length && bt.inner0 + r < axis.inner)
        {
            int64_t const spatial = spatialOffset(axis, bt.outer, bt.pos0 + x, bt.inner0 + r);
            value = jointScale<float>(stats + statsIndex(problem, bt.batch, spatial, 0), problem.numAxes, axisIndex);
        }
        scale[e] = value;
    }
}

//! CUDA-core aggregation: per block kLines lines x kChannels channels x kPositions positions,
//! keys in chunks of 16; each thread accumulates 4 channels x 4 positions of one line.
template <int Lines, int Channels, int Positions, bool LinesFastest>
struct SimtConfig
{
    static constexpr int kLines = Lines;
    static constexpr int kChannels = Channels;
    static constexpr int kPositions = Positions;
    static constexpr int kKeys = 16;
    static constexpr int kChannelGroups = Channels / 4;
    static constexpr int kPositionGroups = Positions / 4;
    //! Neighbouring threads take neighbouring lines, so the output stores are contiguous.
    static constexpr bool kLinesFastest = LinesFastest;
    static_assert(Lines * kChannelGroups * kPositionGroups == kThreads, "one 4x4 micro-tile per thread");
};

using SimtInnermost = SimtConfig<1, 64, 64, false>;
//! Strided axes: 32-byte sectors along the lines, as for the energies (8 lines fp32, 16 fp16).
template <typename T>
struct SimtStridedFor
{
    using type = SimtConfig<8, 32, 16, true>;
};
template <>
struct SimtStridedFor<__half>
{
    using type = SimtConfig<16, 32, 8, true>;
};

//! Adds `value` to what the earlier axes summed for output element `index` (when `accumulate`)
//! and stores the sum: into `out` on the last axis or without a partial buffer (fp32), else
//! into the fp32 `partial` buffer, so fp16 output is rounded once.
template <typename T>
__device__ __forceinline__ void storeSum(
    T* out, float* partial, int64_t index, float value, bool accumulate, bool last)
{
    if (accumulate)
    {
        value += partial != nullptr ? partial[index] : toFloat(out[index]);
    }
    if (last || partial == nullptr)
    {
        out[index] = fromFloat<T>(value);
    }
    else
    {
        partial[index] = value;
    }
}

template <typename T, typename Cfg>
__global__ void __launch_bounds__(kThreads) aggregateSimtKernel(T const* __restrict__ v, T const* __restrict__ probs,
    RowStats<float> const* __restrict__ stats, T* __restrict__ out, float* __restrict__ partial, Problem problem,
    int axisIndex, bool accumulate, bool last)
{
    constexpr int kL = Cfg::kLines;
    constexpr int kC = Cfg::kChannels;
    constexpr int kX = Cfg::kPositions;
    constexpr int kK = Cfg::kKeys;
    __shared__ float vs[kK][kL][kC + 1];
    __shared__ float ps[kK][kL][kX + 1];
    __shared__ float scale[kL * kX];

    Axis const axis = axisOf(problem, axisIndex);
    int const length = axis.length;
    int const channels = problem.valueChannels;
    int64_t const plane = spatialSize(problem);
    BlockTile const bt = decodeTile(axis, kX, kL, static_cast<int>((channels + kC - 1) / kC), kC);
    int64_t const base = (bt.batch * channels) * plane + bt.outer * length * axis.inner + bt.inner0;

    loadJointScales<kL, kX>(scale, stats, problem, axis, axisIndex, bt);

    int const t = threadIdx.x;
    int tr;
    int tx;
    int tc;
    if (Cfg::kLinesFastest)
    {
        tr = t % kL;
        tx = (t / kL) % Cfg::kPositionGroups;
        tc = t / (kL * Cfg::kPositionGroups);
    }
    else
    {
        tx = t % Cfg::kPositionGroups;
        tc = (t / Cfg::kPositionGroups) % Cfg::kChannelGroups;
        tr = t / (Cfg::kPositionGroups * Cfg::kChannelGroups);
    }

    float acc[4][4] = {};
    for (int y0 = 0; y0 < length; y0 += kK)
    {
        __syncthreads(); // scale is ready / the previous chunk's readers are done
        for (int e = t; e < kK * kL * kC; e += kThreads)
        {
            int const r = e % kL;
            int const y = (e / kL) % kK;
            int const c = e / (kL * kK);
            float value = 0.f;
            if (bt.channel0 + c < channels && y0 + y < length && bt.inner0 + r < axis.inner)
            {
                value = toFloat(v[base + (bt.channel0 + c) * plane + static_cast<int64_t>(y0 + y) * axis.inner + r]);
            }
            vs[y][r][c] = value;
        }
        for (int e = t; e < kK * kL * kX; e += kThreads)
        {
            int const y = e % kK;
            int const x = (e / kK) % kX;
            int const r = e / (kK * kX);
            float value = 0.f;
            if (bt.pos0 + x < length && bt.inner0 + r < axis.inner && y0 + y < length)
            {
                int64_t const row
                    = probabilityRow(axis, lineIndex(axis, bt.batch, bt.outer, bt.inner0 + r), bt.pos0 + x);
                value = toFloat(probs[row + y0 + y]) * scale[r * kX + x];
            }
            ps[y][r][x] = value;
        }
        __syncthreads();
#pragma unroll
        for (int y = 0; y < kK; ++y)
        {
            float cv[4];
            float pv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                cv[i] = vs[y][tr][tc + Cfg::kChannelGroups * i];
                pv[i] = ps[y][tr][tx + Cfg::kPositionGroups * i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                {
                    acc[i][j] = fmaf(cv[i], pv[j], acc[i][j]);
                }
            }
        }
    }

    if (bt.inner0 + tr >= axis.inner)
    {
        return;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
        int const c = bt.channel0 + tc + Cfg::kChannelGroups * i;
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            int const x = bt.pos0 + tx + Cfg::kPositionGroups * j;
            if (c < channels && x < length)
            {
                int64_t const index = base + c * plane + static_cast<int64_t>(x) * axis.inner + tr;
                storeSum<T>(out, partial, index, acc[i][j], accumulate, last);
            }
        }
    }
}

//! Tensor-core (WMMA) aggregation: one kernel over element traits (Fp16Mma, Tf32Mma). Per block
//! kLines lines x kChannels channels x kPositions positions, keys in chunks of kKeys; each warp
//! owns kWarpC x kWarpX 16x16 fp32 accumulator tiles of one line. The traits give the WMMA key
//! step, the shared row padding, the epilogue rounds, the architecture and the Stager (how a
//! chunk gets into shared memory, defined with the kernel).
//!
//! fp16, sm_70+, two blocks per SM (so the accumulators leave one tile row per round). Rows of
//! keys + 8 halfs: a multiple of 8 (WMMA ldm), not of 64 B; with several lines, 32 more bytes
//! per value line (8 per output line) spread the lines over the banks, tiles 32-byte aligned.
struct Fp16Mma
{
    using Element = __half;
    static constexpr int kMinComputeMajor = 7;
    static constexpr int kMinBlocksPerSm = 2;
    static constexpr int kKeyStep = 16;
    static constexpr int kRowPad = 8;
    static constexpr int kValueLinePad = 16;
    static constexpr int kOutLinePad = 8;
    static constexpr bool kEpilogueByTileRow = true;
    template <typename Cfg>
    struct Stager;
};

//! fp32 as TF32 (10 mantissa bits), opt-in (Aggregation::kTensorCoreTf32), sm_80+, no minimum
//! of blocks per SM. Rows of 16 keys + 4 floats: a multiple of 4 (WMMA ldm), 80 bytes, so every
//! 16-row tile starts 32-byte aligned and consecutive rows fall on different banks.
struct Tf32Mma
{
    using Element = float;
    static constexpr int kMinComputeMajor = 8;
    static constexpr int kMinBlocksPerSm = 0;
    static constexpr int kKeyStep = 8;
    static constexpr int kRowPad = 4;
    static constexpr int kValueLinePad = 0;
    static constexpr int kOutLinePad = 0;
    static constexpr bool kEpilogueByTileRow = false;
    template <typename Cfg>
    struct Stager;
};

template <typename Traits, int Lines, int Channels, int Positions, int Keys, int WarpC, int WarpX>
struct TensorCoreConfig
{
    using Mma = Traits;
    using Element = typename Traits::Element;
    static constexpr int kLines = Lines;
    static constexpr int kChannels = Channels;
    static constexpr int kPositions = Positions;
    static constexpr int kKeys = Keys;
    static constexpr int kWarpC = WarpC;
    static constexpr int kWarpX = WarpX;
    static constexpr int kWarpsC = Channels / 16 / WarpC;
    static constexpr int kWarpsX = Positions / 16 / WarpX;
    //! Shared operands: values [line][channel][key] and probabilities [line][position][key].
    static constexpr int kRow = kKeys + Traits::kRowPad;
    static constexpr int kValueLine = Channels * kRow + (Lines > 1 ? Traits::kValueLinePad : 0);
    static constexpr int kProbLine = Positions * kRow;
    //! Epilogue: accumulators -> shared memory (aliasing the operands; fp32 [line][channel]
    //! [position]) -> out, in rounds of kRoundRows tile rows of every warp.
    static constexpr int kRoundRows = Traits::kEpilogueByTileRow ? 1 : WarpC;
    static constexpr int kRoundChannels = kWarpsC * kRoundRows * 16;
    static constexpr int kOutRow = Positions + 4;
    static constexpr int kOutLine = kRoundChannels * kOutRow + (Lines > 1 ? Traits::kOutLinePad : 0);
    static constexpr int kTileBytes = Lines * (kValueLine + kProbLine) * static_cast<int>(sizeof(Element));
    static constexpr int kOutBytes = Lines * kOutLine * static_cast<int>(sizeof(float));
    static constexpr int kSharedBytes = kTileBytes > kOutBytes ? kTileBytes : kOutBytes;
    static_assert(Lines * kWarpsC * kWarpsX == kWarps, "every warp owns one set of tiles");
    static_assert(Channels % (16 * kWarpC) == 0 && Positions % (16 * kWarpX) == 0, "16x16 tiles");
    static_assert(kKeys % Traits::kKeyStep == 0, "whole WMMA steps per chunk");
    static_assert(kSharedBytes <= kDefaultSharedBytes - 1024, "static shared memory");
};

//! The tensor-core tiles of each element type: innermost axis, other axes.
template <typename T>
struct TensorCoreTiles
{
    using Innermost = TensorCoreConfig<Tf32Mma, 1, 64, 64, 16, 2, 1>;
    using Strided = TensorCoreConfig<Tf32Mma, 8, 32, 16, 16, 2, 1>;
};
template <>
struct TensorCoreTiles<__half>
{
    using Innermost = TensorCoreConfig<Fp16Mma, 1, 128, 64, 32, 1, 4>;
    using Strided = TensorCoreConfig<Fp16Mma, 8, 32, 32, 16, 2, 2>;
};

//! What a Stager reads and writes: this block's tile, its sources, the pixels' joint-softmax
//! weights and the shared operands.
template <typename Cfg>
struct ChunkSource
{
    typename Cfg::Element const* v;
    typename Cfg::Element const* probs;
    float const* scale;
    typename Cfg::Element* vs;
    typename Cfg::Element* ps;
    Axis axis;
    BlockTile bt;
    int64_t base;
    int64_t plane;
    int channels;
};

// A Stager's hooks in the key loop: prologue() once before it; beforeMma(y0) returns with chunk
// y0 in shared memory (after a barrier); afterMma(y0) runs once every warp is done with chunk y0.
// The WMMA types exist from sm_70 (TF32 from sm_80).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700

//! fp16: chunk 0 before the loop; then the next chunk is fetched into registers (values in
//! pairs, probabilities as 16-byte vectors) before the MMA on this one and stashed after it.
//! Values are copied; probabilities are scaled by the joint-softmax weight and rounded to fp16.
template <typename Cfg>
struct Fp16Mma::Stager
{
    using Operand = __half;
    static constexpr int kL = Cfg::kLines;
    static constexpr int kX = Cfg::kPositions;
    static constexpr int kK = Cfg::kKeys;
    static constexpr int kRow = Cfg::kRow;
    static constexpr int kValuesPerThread = kL * Cfg::kChannels * kK / kThreads;
    static constexpr int kVectorsPerRow = kK / 8;
    static constexpr int kVectorsPerThread = kL * kX * kVectorsPerRow / kThreads;
    static constexpr int kValueChannelStep = kThreads / (kL * kK);
    static constexpr int kVectorLineStep = kThreads / (kVectorsPerRow * kX);
    static_assert(kK % 16 == 0, "8-key vectors in rows padded to 16 keys");
    static_assert(kValuesPerThread * kThreads == kL * Cfg::kChannels * kK && kValuesPerThread % 2 == 0,
        "even value loads, in pairs");
    static_assert(kVectorsPerThread * kThreads == kL * kX * kVectorsPerRow, "even vector loads");
    static_assert(kThreads % (kL * kK) == 0 && kThreads % (kVectorsPerRow * kX) == 0,
        "each thread keeps its (line, key) and (line, position) slots across loads");

    ChunkSource<Cfg> src;
    // Every thread loads the same (line, key) / (line, position, part) slots in each chunk:
    // the per-thread coordinates and row offsets are fixed once, outside the key loop.
    int thread = threadIdx.x;
    int valueLine = thread % kL;
    int valueKey = (thread / kL) % kK;
    int valueChannel = thread / (kL * kK);
    bool valueLineInside = src.bt.inner0 + valueLine < src.axis.inner;
    int vectorPart = thread % kVectorsPerRow;
    int vectorPosition = (thread / kVectorsPerRow) % kX;
    int vectorLine = thread / (kVectorsPerRow * kX);
    int64_t vectorRow[kVectorsPerThread];
    bool vectorInside[kVectorsPerThread];
    // Values in flight are kept in pairs (one 32-bit register each) to stay clear of spills.
    __half2 values[kValuesPerThread / 2];
    uint4 vectors[kVectorsPerThread];

    __device__ explicit Stager(ChunkSource<Cfg> const& source)
        : src(source)
    {
        BlockTile const& bt = src.bt;
        Axis const& axis = src.axis;
#pragma unroll
        for (int i = 0; i < kVectorsPerThread; ++i)
        {
            int const r = vectorLine + i * kVectorLineStep;
            vectorInside[i] = bt.pos0 + vectorPosition < axis.length && bt.inner0 + r < axis.inner;
            vectorRow[i] = vectorInside[i]
                ? probabilityRow(axis, lineIndex(axis, bt.batch, bt.outer, bt.inner0 + r), bt.pos0 + vectorPosition)
                    + vectorPart * 8
                : 0;
        }
    }

    __device__ void prologue()
    {
        fetch(0);
        stash();
        __syncthreads();
    }

    __device__ void beforeMma(int y0)
    {
        if (y0 + kK < src.axis.length)
        {
            fetch(y0 + kK); // in flight while the tensor cores work on this chunk
        }
    }

    __device__ void afterMma(int y0)
    {
        if (y0 + kK < src.axis.length)
        {
            stash();
            __syncthreads();
        }
    }

    __device__ void fetch(int y0)
    {
        bool const keyInside = valueLineInside && y0 + valueKey < src.axis.length;
        __half const* source = src.v + src.base + static_cast<int64_t>(y0 + valueKey) * src.axis.inner + valueLine;
        __half const zero = __float2half_rn(0.f);
#pragma unroll
        for (int i = 0; i < kValuesPerThread; i += 2)
        {
            int const c = src.bt.channel0 + valueChannel + i * kValueChannelStep;
            int const next = c + kValueChannelStep;
            values[i / 2] = __halves2half2(keyInside && c < src.channels ? source[c * src.plane] : zero,
                keyInside && next < src.channels ? source[next * src.plane] : zero);
        }
        // Rows are keyStride long (a multiple of 16, zero padded): 8 keys are either all inside
        // the row or all past it, and every row starts 32-byte aligned.
        bool const partInside = y0 + vectorPart * 8 < src.axis.keyStride;
#pragma unroll
        for (int i = 0; i < kVectorsPerThread; ++i)
        {
            vectors[i] = vectorInside[i] && partInside
                ? *reinterpret_cast<uint4 const*>(src.probs + vectorRow[i] + y0)
                : make_uint4(0u, 0u, 0u, 0u);
        }
    }

    __device__ void stash()
    {
#pragma unroll
        for (int i = 0; i < kValuesPerThread; i += 2)
        {
            int const c = valueChannel + i * kValueChannelStep;
            __half* slot = src.vs + valueLine * Cfg::kValueLine + c * kRow + valueKey;
            slot[0] = __low2half(values[i / 2]);
            slot[kValueChannelStep * kRow] = __high2half(values[i / 2]);
        }
#pragma unroll
        for (int i = 0; i < kVectorsPerThread; ++i)
        {
            int const r = vectorLine + i * kVectorLineStep;
            // The joint-softmax weight of the pixel turns its numerators into probabilities.
            float const weight = src.scale[r * kX + vectorPosition];
            uint4 const packed = vectors[i];
            uint4 const scaled = make_uint4(scaleHalfPair(packed.x, weight), scaleHalfPair(packed.y, weight),
                scaleHalfPair(packed.z, weight), scaleHalfPair(packed.w, weight));
            *reinterpret_cast<uint4*>(src.ps + r * Cfg::kProbLine + vectorPosition * kRow + vectorPart * 8) = scaled;
        }
    }
};

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800

//! TF32: each chunk is loaded straight into shared memory before its MMA, values and
//! probabilities (after the joint-softmax weight) rounded to TF32; nothing is fetched ahead.
template <typename Cfg>
struct Tf32Mma::Stager
{
    using Operand = nvcuda::wmma::precision::tf32;
    ChunkSource<Cfg> src;

    __device__ void prologue() {}

    __device__ void afterMma(int /*y0*/) {}

    __device__ void beforeMma(int y0)
    {
        constexpr int kL = Cfg::kLines;
        constexpr int kX = Cfg::kPositions;
        constexpr int kK = Cfg::kKeys;
        BlockTile const& bt = src.bt;
        Axis const& axis = src.axis;
        for (int e = threadIdx.x; e < kK * kL * Cfg::kChannels; e += kThreads)
        {
            // Lines fastest, then keys: neighbouring threads read neighbouring memory on every axis.
            int const r = e % kL;
            int const y = (e / kL) % kK;
            int const c = e / (kL * kK);
            float value = 0.f;
            if (bt.channel0 + c < src.channels && y0 + y < axis.length && bt.inner0 + r < axis.inner)
            {
                value = src.v[src.base + (bt.channel0 + c) * src.plane + static_cast<int64_t>(y0 + y) * axis.inner + r];
            }
            src.vs[r * Cfg::kValueLine + c * Cfg::kRow + y] = nvcuda::wmma::__float_to_tf32(value);
        }
        for (int e = threadIdx.x; e < kK * kL * kX; e += kThreads)
        {
            int const y = e % kK;
            int const x = (e / kK) % kX;
            int const r = e / (kK * kX);
            float value = 0.f;
            if (bt.pos0 + x < axis.length && bt.inner0 + r < axis.inner && y0 + y < axis.length)
            {
                int64_t const row
                    = probabilityRow(axis, lineIndex(axis, bt.batch, bt.outer, bt.inner0 + r), bt.pos0 + x);
                value = src.probs[row + y0 + y] * src.scale[r * kX + x];
            }
            src.ps[r * Cfg::kProbLine + x * Cfg::kRow + y] = nvcuda::wmma::__float_to_tf32(value);
        }
        __syncthreads();
    }
};

#endif // TF32
#endif // WMMA

template <typename Cfg>
__global__ void __launch_bounds__(kThreads, Cfg::Mma::kMinBlocksPerSm) aggregateTensorCoreKernel(
    typename Cfg::Element const* __restrict__ v, typename Cfg::Element const* __restrict__ probs,
    RowStats<float> const* __restrict__ stats, typename Cfg::Element* __restrict__ out,
    float* __restrict__ partial, Problem problem, int axisIndex, bool accumulate, bool last)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    if constexpr (__CUDA_ARCH__ >= Cfg::Mma::kMinComputeMajor * 100)
    {
        using namespace nvcuda;
        using T = typename Cfg::Element;
        using Stager = typename Cfg::Mma::template Stager<Cfg>;
        constexpr int kL = Cfg::kLines;
        constexpr int kC = Cfg::kChannels;
        constexpr int kX = Cfg::kPositions;
        constexpr int kK = Cfg::kKeys;
        constexpr int kStep = Cfg::Mma::kKeyStep;
        constexpr int kRow = Cfg::kRow;
        constexpr int kRoundRows = Cfg::kRoundRows;
        __shared__ __align__(128) unsigned char shared[Cfg::kSharedBytes];
        __shared__ float scale[kL * kX];
        T* vs = reinterpret_cast<T*>(shared);
        T* ps = vs + kL * Cfg::kValueLine;
        float* os = reinterpret_cast<float*>(shared); // epilogue only: aliases vs / ps

        Axis const axis = axisOf(problem, axisIndex);
        int const length = axis.length;
        int const channels = problem.valueChannels;
        int64_t const plane = spatialSize(problem);
        BlockTile const bt = decodeTile(axis, kX, kL, (channels + kC - 1) / kC, kC);
        int64_t const base = (bt.batch * channels) * plane + bt.outer * length * axis.inner + bt.inner0;

        loadJointScales<kL, kX>(scale, stats, problem, axis, axisIndex, bt);
        Stager stager{ChunkSource<Cfg>{v, probs, scale, vs, ps, axis, bt, base, plane, channels}};

        int const t = threadIdx.x;
        int const warp = t / 32;
        int const wr = warp / (Cfg::kWarpsC * Cfg::kWarpsX);
        int const wc = (warp / Cfg::kWarpsX) % Cfg::kWarpsC;
        int const wx = warp % Cfg::kWarpsX;
        wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[Cfg::kWarpC][Cfg::kWarpX];
#pragma unroll
        for (int i = 0; i < Cfg::kWarpC; ++i)
        {
#pragma unroll
            for (int j = 0; j < Cfg::kWarpX; ++j)
            {
                wmma::fill_fragment(acc[i][j], 0.f);
            }
        }

        __syncthreads(); // scale is ready
        stager.prologue();
        for (int y0 = 0; y0 < length; y0 += kK)
        {
            stager.beforeMma(y0);
#pragma unroll
            for (int step = 0; step < kK / kStep; ++step)
            {
                wmma::fragment<wmma::matrix_b, 16, 16, kStep, typename Stager::Operand, wmma::col_major> b[Cfg::kWarpX];
#pragma unroll
                for (int j = 0; j < Cfg::kWarpX; ++j)
                {
                    // B(key, position) = p[position][key]: column-major with the key row contiguous.
                    wmma::load_matrix_sync(
                        b[j], ps + wr * Cfg::kProbLine + (wx * Cfg::kWarpX + j) * 16 * kRow + step * kStep, kRow);
                }
#pragma unroll
                for (int i = 0; i < Cfg::kWarpC; ++i)
                {
                    wmma::fragment<wmma::matrix_a, 16, 16, kStep, typename Stager::Operand, wmma::row_major> a;
                    wmma::load_matrix_sync(
                        a, vs + wr * Cfg::kValueLine + (wc * Cfg::kWarpC + i) * 16 * kRow + step * kStep, kRow);
#pragma unroll
                    for (int j = 0; j < Cfg::kWarpX; ++j)
                    {
                        wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
                    }
                }
            }
            __syncthreads(); // chunk y0's readers are done: the next chunk, or os, may overwrite it
            stager.afterMma(y0);
        }

        // Epilogue, in rounds of kRoundRows accumulator rows of every warp: tiles -> shared -> out,
        // lines fastest, then positions, so that the output stores are contiguous on every axis.
#pragma unroll
        for (int i0 = 0; i0 < Cfg::kWarpC; i0 += kRoundRows)
        {
#pragma unroll
            for (int i = i0; i < i0 + kRoundRows; ++i)
            {
#pragma unroll
                for (int j = 0; j < Cfg::kWarpX; ++j)
                {
                    int const row = wc * kRoundRows + i - i0; // tile row within the round
                    wmma::store_matrix_sync(os + wr * Cfg::kOutLine + row * 16 * Cfg::kOutRow
                            + (wx * Cfg::kWarpX + j) * 16,
                        acc[i][j], Cfg::kOutRow, wmma::mem_row_major);
                }
            }
            __syncthreads();
            for (int e = t; e < kL * Cfg::kRoundChannels * kX; e += kThreads)
            {
                int const r = e % kL;
                int const x = (e / kL) % kX;
                int const local = e / (kL * kX);
                // Between two warps' tile rows of this round lie kWarpC - kRoundRows of other rounds.
                int const c = bt.channel0 + local + (local / (16 * kRoundRows)) * (Cfg::kWarpC - kRoundRows) * 16
                    + i0 * 16;
                if (c < channels && bt.pos0 + x < length && bt.inner0 + r < axis.inner)
                {
                    int64_t const index = base + c * plane + static_cast<int64_t>(bt.pos0 + x) * axis.inner + r;
                    storeSum<T>(
                        out, partial, index, os[r * Cfg::kOutLine + local * Cfg::kOutRow + x], accumulate, last);
                }
            }
            if (i0 + kRoundRows < Cfg::kWarpC)
            {
                __syncthreads(); // the next round overwrites os
            }
        }
        return;
    }
#endif
    // Never launched: the host selects this kernel only from Cfg::Mma::kMinComputeMajor on.
    __trap();
}

// ---------------------------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------------------------

struct DeviceInfo
{
    int device;
    int computeMajor;
    int sharedOptin;
};

//! Devices whose attributes and kernel settings are cached (others are queried every call).
constexpr int kCachedDevices = 64;

//! Compute capability and opt-in shared memory of the current device, read from the driver once
//! per device and process (a launch then costs one cudaGetDevice, not three queries).
cudaError_t queryDevice(DeviceInfo& info)
{
    // 0 = not read yet. Benign race: two threads may both read the same values once.
    static std::atomic<int> cachedMajor[kCachedDevices];
    static std::atomic<int> cachedOptin[kCachedDevices];
    cudaError_t status = cudaGetDevice(&info.device);
    if (status != cudaSuccess)
    {
        return status;
    }
    bool const cacheable = info.device >= 0 && info.device < kCachedDevices;
    if (cacheable)
    {
        info.computeMajor = cachedMajor[info.device].load(std::memory_order_acquire);
        if (info.computeMajor != 0)
        {
            info.sharedOptin = cachedOptin[info.device].load(std::memory_order_relaxed);
            return cudaSuccess;
        }
    }
    status = cudaDeviceGetAttribute(&info.computeMajor, cudaDevAttrComputeCapabilityMajor, info.device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&info.sharedOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, info.device);
    }
    if (status == cudaSuccess && cacheable)
    {
        cachedOptin[info.device].store(info.sharedOptin, std::memory_order_relaxed);
        cachedMajor[info.device].store(info.computeMajor, std::memory_order_release);
    }
    return status;
}

//! Raises the dynamic shared memory limit of energyStatsKernel<T, Cfg> to the device maximum,
//! once per device and process. Always the maximum (not what one call needs): idempotent, so
//! concurrent callers on other streams never see a smaller limit than they need.
template <typename T, typename Cfg, typename Kernel>
cudaError_t allowOptinSharedMemory(Kernel kernel, DeviceInfo const& device)
{
    static std::atomic<bool> raised[kCachedDevices];
    bool const cacheable = device.device >= 0 && device.device < kCachedDevices;
    if (cacheable && raised[device.device].load(std::memory_order_acquire))
    {
        return cudaSuccess;
    }
    cudaError_t const status
        = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, device.sharedOptin);
    if (status == cudaSuccess && cacheable)
    {
        raised[device.device].store(true, std::memory_order_release);
    }
    return status;
}

cudaError_t checkGrid(int64_t blocks)
{
    return blocks > 0x7fffffff ? cudaErrorInvalidConfiguration : cudaSuccess;
}

template <typename T, typename Cfg>
cudaError_t launchEnergy(T const* q, T const* k, T* probs, RowStats<float>* stats, Problem const& problem, int axis,
    DeviceInfo const& device, bool recompute, cudaStream_t stream)
{
    Axis const a = axisOf(problem, axis);
    int64_t const blocks = problem.batch * a.outer * ceilDiv(a.inner, Cfg::kLines) * ceilDiv(a.length, Cfg::kPositions);
    cudaError_t status = checkGrid(blocks);
    if (status != cudaSuccess)
    {
        return status;
    }
    size_t const fullBytes = Cfg::sharedFloats(a.length | 1) * sizeof(float);
    bool const fullRow = !recompute && fullBytes <= static_cast<size_t>(device.sharedOptin);
    size_t const bytes = fullRow ? fullBytes : Cfg::sharedFloats(Cfg::kKeyRow) * sizeof(float);
    auto kernel = energyStatsKernel<T, Cfg>;
    if (bytes > kDefaultSharedBytes)
    {
        status = allowOptinSharedMemory<T, Cfg>(kernel, device);
        if (status != cudaSuccess)
        {
            return status;
        }
    }
    // Launch errors are collected once, after the call's last launch.
    kernel<<<static_cast<unsigned>(blocks), kThreads, bytes, stream>>>(q, k, probs, stats, problem, axis, fullRow);
    return cudaSuccess;
}

template <typename Cfg, typename T, typename Kernel>
cudaError_t launchAggregation(Kernel kernel, T const* v, T const* probs, RowStats<float> const* stats, T* out,
    float* partial, Problem const& problem, int axis, cudaStream_t stream)
{
    Axis const a = axisOf(problem, axis);
    int64_t const blocks = problem.batch * a.outer * ceilDiv(a.inner, Cfg::kLines)
        * ceilDiv(problem.valueChannels, Cfg::kChannels) * ceilDiv(a.length, Cfg::kPositions);
    cudaError_t const status = checkGrid(blocks);
    if (status != cudaSuccess)
    {
        return status;
    }
    bool const last = axis + 1 == problem.numAxes;
    kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        v, probs, stats, out, partial, problem, axis, axis > 0, last);
    return cudaSuccess; // launch errors: checked once per call
}

template <typename T>
bool useTensorCores(LaunchOptions const& options, DeviceInfo const& device)
{
    // fp32 stays on CUDA cores unless TF32 is asked for: TF32 (10-bit mantissa, about 5e-4
    // relative per rounded operand) misses the op's 1e-5 agreement with the reference.
    return options.aggregation == Aggregation::kTensorCoreTf32 && device.computeMajor >= Tf32Mma::kMinComputeMajor;
}

template <>
bool useTensorCores<__half>(LaunchOptions const& options, DeviceInfo const& device)
{
    // kTensorCoreTf32 means tensor cores for fp16 too (fp16 inputs, fp32 accumulation).
    return options.aggregation != Aggregation::kSimt && device.computeMajor >= Fp16Mma::kMinComputeMajor;
}

//! CUDA cores, or tensor cores when `tensorCores` (fp16; fp32 as TF32 when asked for).
template <typename T>
cudaError_t aggregateAxis(T const* v, T const* probs, RowStats<float> const* stats, T* out, float* partial,
    Problem const& problem, int axis, bool tensorCores, cudaStream_t stream)
{
    using Strided = typename SimtStridedFor<T>::type;
    using TensorCoreInnermost = typename TensorCoreTiles<T>::Innermost;
    using TensorCoreStrided = typename TensorCoreTiles<T>::Strided;
    bool const innermost = axisOf(problem, axis).inner == 1;
    if (tensorCores)
    {
        if (innermost)
        {
            return launchAggregation<TensorCoreInnermost>(aggregateTensorCoreKernel<TensorCoreInnermost>, v, probs,
                stats, out, partial, problem, axis, stream);
        }
        return launchAggregation<TensorCoreStrided>(
            aggregateTensorCoreKernel<TensorCoreStrided>, v, probs, stats, out, partial, problem, axis, stream);
    }
    if (innermost)
    {
        return launchAggregation<SimtInnermost>(
            aggregateSimtKernel<T, SimtInnermost>, v, probs, stats, out, partial, problem, axis, stream);
    }
    return launchAggregation<Strided>(
        aggregateSimtKernel<T, Strided>, v, probs, stats, out, partial, problem, axis, stream);
}

//! Bytes per element of the fp32 partial-sum buffer: only fp16 with several axes needs one.
size_t partialElementSize(size_t elementSize, int numAxes)
{
    return elementSize == sizeof(__half) && numAxes > 1 ? sizeof(float) : 0;
}

bool validShape(int batch, int qkChannels, int valueChannels, int numAxes, int const* extent)
{
    if (numAxes < 1 || numAxes > kMaxAxes || extent == nullptr || batch < 0 || qkChannels < 0 || valueChannels < 0)
    {
        return false;
    }
    for (int d = 0; d < numAxes; ++d)
    {
        if (extent[d] < 0)
        {
            return false;
        }
    }
    return true;
}

Problem makeProblem(int batch, int qkChannels, int valueChannels, int numAxes, int const* extent)
{
    Problem problem{batch, qkChannels, valueChannels, numAxes, {1, 1, 1}};
    for (int d = 0; d < numAxes; ++d)
    {
        problem.extent[d] = extent[d];
    }
    return problem;
}

} // namespace

size_t crissCrossAttentionWorkspaceSize(
    int batch, int valueChannels, int numAxes, int const* extent, size_t elementSize)
{
    if (!validShape(batch, 0, valueChannels, numAxes, extent))
    {
        return 0;
    }
    Problem const problem = makeProblem(batch, 0, valueChannels, numAxes, extent);
    size_t const partial = partialElementSize(elementSize, numAxes);
    return workspaceLayout(problem, elementSize, sizeof(RowStats<float>), partial).bytes + kWorkspaceSlack;
}

size_t crissCrossAttention2dWorkspaceSize(int batch, int valueChannels, int height, int width, size_t elementSize)
{
    int const extent[2] = {height, width};
    return crissCrossAttentionWorkspaceSize(batch, valueChannels, 2, extent, elementSize);
}

size_t crissCrossAttention3dWorkspaceSize(
    int batch, int valueChannels, int frames, int height, int width, size_t elementSize)
{
    int const extent[3] = {frames, height, width};
    return crissCrossAttentionWorkspaceSize(batch, valueChannels, 3, extent, elementSize);
}

template <typename T>
cudaError_t launchCrissCrossAttention(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int numAxes, int const* extent, void* workspace, cudaStream_t stream, LaunchOptions options)
{
    if (!validShape(batch, qkChannels, valueChannels, numAxes, extent))
    {
        return cudaErrorInvalidValue;
    }
    Problem const problem = makeProblem(batch, qkChannels, valueChannels, numAxes, extent);
    if (batch == 0 || valueChannels == 0 || spatialSize(problem) == 0)
    {
        return cudaSuccess; // empty output: nothing to do
    }
    if (v == nullptr || out == nullptr || workspace == nullptr || (qkChannels > 0 && (q == nullptr || k == nullptr)))
    {
        return cudaErrorInvalidValue;
    }
    DeviceInfo device{};
    cudaError_t status = queryDevice(device);
    if (status != cudaSuccess)
    {
        return status;
    }
    size_t const partialSize = partialElementSize(sizeof(T), numAxes);
    WorkspaceLayout const layout = workspaceLayout(problem, sizeof(T), sizeof(RowStats<float>), partialSize);
    // The size asked for includes kWorkspaceSlack: every region is kRegionAlignment aligned.
    auto const address = reinterpret_cast<uintptr_t>(workspace);
    char* const bytes = static_cast<char*>(workspace) + (alignUp(address, kRegionAlignment) - address);
    auto* const stats = reinterpret_cast<RowStats<float>*>(bytes + layout.stats);
    float* const partial = partialSize > 0 ? reinterpret_cast<float*>(bytes + layout.partial) : nullptr;

    // All statistics first: the aggregation of any axis needs the joint softmax of every pixel.
    for (int d = 0; d < numAxes && status == cudaSuccess; ++d)
    {
        T* const probs = reinterpret_cast<T*>(bytes + layout.probabilities[d]);
        using Strided = typename EnergyStridedFor<T>::type;
        status = axisOf(problem, d).inner == 1
            ? launchEnergy<T, EnergyInnermost>(q, k, probs, stats, problem, d, device, options.recomputeEnergies, stream)
            : launchEnergy<T, Strided>(q, k, probs, stats, problem, d, device, options.recomputeEnergies, stream);
    }
    bool const tensorCores = useTensorCores<T>(options, device);
    for (int d = 0; d < numAxes && status == cudaSuccess; ++d)
    {
        T const* const probs = reinterpret_cast<T const*>(bytes + layout.probabilities[d]);
        status = aggregateAxis<T>(v, probs, stats, out, partial, problem, d, tensorCores, stream);
    }
    // One check for every launch of this call (a bad configuration, a missing kernel image).
    return status == cudaSuccess ? cudaGetLastError() : status;
}

template <typename T>
cudaError_t launchCrissCrossAttention2d(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int height, int width, void* workspace, cudaStream_t stream)
{
    int const extent[2] = {height, width};
    return launchCrissCrossAttention<T>(q, k, v, out, batch, qkChannels, valueChannels, 2, extent, workspace, stream);
}

template <typename T>
cudaError_t launchCrissCrossAttention3d(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int frames, int height, int width, void* workspace, cudaStream_t stream)
{
    int const extent[3] = {frames, height, width};
    return launchCrissCrossAttention<T>(q, k, v, out, batch, qkChannels, valueChannels, 3, extent, workspace, stream);
}

template cudaError_t launchCrissCrossAttention<float>(float const*, float const*, float const*, float*, int, int,
    int, int, int const*, void*, cudaStream_t, LaunchOptions);
template cudaError_t launchCrissCrossAttention<__half>(__half const*, __half const*, __half const*, __half*, int,
    int, int, int, int const*, void*, cudaStream_t, LaunchOptions);
template cudaError_t launchCrissCrossAttention2d<float>(
    float const*, float const*, float const*, float*, int, int, int, int, int, void*, cudaStream_t);
template cudaError_t launchCrissCrossAttention2d<__half>(
    __half const*, __half const*, __half const*, __half*, int, int, int, int, int, void*, cudaStream_t);
template cudaError_t launchCrissCrossAttention3d<float>(
    float const*, float const*, float const*, float*, int, int, int, int, int, int, void*, cudaStream_t);
template cudaError_t launchCrissCrossAttention3d<__half>(
    __half const*, __half const*, __half const*, __half*, int, int, int, int, int, int, void*, cudaStream_t);

} // namespace cca
} // namespace ccnet
