/*
 * Per-pixel math of the criss-cross attention kernels, shared by the CUDA kernels and by the
 * host-only harness that checks it on the CPU (crissCrossAttentionHostCheck.cpp).
 *
 * Everything here is plain C++17 plus `__host__ __device__` qualifiers when nvcc compiles it, so
 * g++ can build the harness without the CUDA toolkit. The kernels own the parallel structure
 * (tiling, shared memory, warp reductions); this header owns what each value means: where a
 * pixel, a key line and a probability row live in memory, which key is masked, how a row of
 * energies becomes softmax statistics and how the per-axis statistics become one joint softmax.
 *
 * Notation. The spatial axes are (H, W) or (T, H, W), row-major after the channel axis. For an
 * axis d of length L, "inner" is the product of the lengths after it (its stride in elements)
 * and "outer" the product of the lengths before it. A position is (outer o, pos x, inner r):
 * spatial offset (o * L + x) * inner + r. Its keys along d are (o, y, r) for y in [0, L).
 * A "line" (b, o, r) is one such set of L positions; its probabilities form an L x keyStride
 * matrix, keyStride = L rounded up to 16 with zero padding (tensor-core tiles need it).
 */
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define CCA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CCA_HOST_DEVICE inline
#endif

namespace ccnet
{
namespace cca
{

//! At most (T, H, W).
constexpr int kMaxAxes = 3;
//! Probability rows are padded to a multiple of this many keys (one tensor-core k-step).
constexpr int kKeyPadding = 16;
//! Workspace regions start on this boundary (vector loads and tensor-core tiles need 32 B).
constexpr size_t kRegionAlignment = 256;
//! Extra workspace bytes the launchers ask for, so that they can align any workspace pointer up
//! to kRegionAlignment themselves: the alignment of every region is guaranteed, not assumed.
constexpr size_t kWorkspaceSlack = kRegionAlignment - 1;

//! The shape of one call: q, k (batch, qkChannels, *extent); v, out (batch, valueChannels, *extent).
struct Problem
{
    int batch;
    int qkChannels;
    int valueChannels;
    int numAxes;
    int extent[kMaxAxes];
};

//! One spatial axis seen from the memory layout.
struct Axis
{
    int length;     //!< L
    int keyStride;  //!< L rounded up to kKeyPadding: elements per probability row
    int64_t inner;  //!< product of the lengths after this axis (stride of this axis)
    int64_t outer;  //!< product of the lengths before this axis
};

//! Online-softmax statistics of a set of energies: their maximum and sum(exp(e - max)).
template <typename Acc>
struct RowStats
{
    Acc max;
    Acc sum;
};

CCA_HOST_DEVICE int64_t spatialSize(Problem const& p)
{
    int64_t size = 1;
    for (int d = 0; d < p.numAxes; ++d)
    {
        size *= p.extent[d];
    }
    return size;
}

CCA_HOST_DEVICE int paddedKeys(int length)
{
    return (length + kKeyPadding - 1) / kKeyPadding * kKeyPadding;
}

CCA_HOST_DEVICE Axis axisOf(Problem const& p, int axis)
{
    Axis a{p.extent[axis], paddedKeys(p.extent[axis]), 1, 1};
    for (int d = 0; d < axis; ++d)
    {
        a.outer *= p.extent[d];
    }
    for (int d = axis + 1; d < p.numAxes; ++d)
    {
        a.inner *= p.extent[d];
    }
    return a;
}

//! Spatial offset (within one channel plane) of position `pos` on the line (outer, inner).
CCA_HOST_DEVICE int64_t spatialOffset(Axis const& a, int64_t outer, int64_t pos, int64_t inner)
{
    return (outer * a.length + pos) * a.inner + inner;
}

//! Index of the line (batch, outer, inner) among all lines of this axis.
CCA_HOST_DEVICE int64_t lineIndex(Axis const& a, int64_t batch, int64_t outer, int64_t inner)
{
    return (batch * a.outer + outer) * a.inner + inner;
}

//! Element offset of the probability row of position `pos` on line `line` (keys contiguous).
CCA_HOST_DEVICE int64_t probabilityRow(Axis const& a, int64_t line, int64_t pos)
{
    return (line * a.length + pos) * a.keyStride;
}

//! Index of the statistics of (batch, spatial position, axis): the axes of a pixel are adjacent,
//! so the joint softmax of a pixel reads one small contiguous record.
CCA_HOST_DEVICE int64_t statsIndex(Problem const& p, int64_t batch, int64_t spatial, int axis)
{
    return (batch * spatialSize(p) + spatial) * p.numAxes + axis;
}

//! The pixel itself lies on every axis; it is kept on the last (innermost) axis only, so it is
//! counted once. This is the rule of model/axial.py (`_energies`).
CCA_HOST_DEVICE bool isMaskedKey(int axis, int numAxes, int64_t pos, int64_t key)
{
    return axis + 1 < numAxes && pos == key;
}

CCA_HOST_DEVICE float ccaExp(float x)
{
    return expf(x);
}

CCA_HOST_DEVICE double ccaExp(double x)
{
    return exp(x);
}

template <typename Acc>
CCA_HOST_DEVICE Acc negativeInfinity()
{
    return static_cast<Acc>(-INFINITY);
}

//! exp(e - max), exactly 0 for a masked energy (-inf) even when max is -inf too (a row whose
//! keys are all masked: a length-1 non-innermost axis), where exp(-inf - -inf) would be NaN.
template <typename Acc>
CCA_HOST_DEVICE Acc shiftedExp(Acc energy, Acc max)
{
    return energy == negativeInfinity<Acc>() ? Acc(0) : ccaExp(energy - max);
}

template <typename Acc>
CCA_HOST_DEVICE RowStats<Acc> emptyStats()
{
    return RowStats<Acc>{negativeInfinity<Acc>(), Acc(0)};
}

//! Statistics of the union of two disjoint sets of energies (online softmax merge).
template <typename Acc>
CCA_HOST_DEVICE RowStats<Acc> mergeStats(RowStats<Acc> a, RowStats<Acc> b)
{
    Acc const max = a.max > b.max ? a.max : b.max;
    return RowStats<Acc>{max, a.sum * shiftedExp(a.max, max) + b.sum * shiftedExp(b.max, max)};
}

//! Weight that turns the stored per-axis numerators exp(e - max_axis) of one pixel into its
//! joint softmax probabilities: exp(max_axis - max_joint) / sum_joint. Merging the per-axis
//! statistics gives the statistics of all H + W - 1 (or T + H + W - 2) energies at once, so the
//! softmax is joint although every axis was reduced on its own.
template <typename Acc, typename Stored>
CCA_HOST_DEVICE Acc jointScale(RowStats<Stored> const* pixelStats, int numAxes, int axis)
{
    RowStats<Acc> joint = emptyStats<Acc>();
    for (int d = 0; d < numAxes; ++d)
    {
        joint = mergeStats(joint, RowStats<Acc>{Acc(pixelStats[d].max), Acc(pixelStats[d].sum)});
    }
    // joint.sum >= 1: the innermost axis always holds the pixel itself with a finite energy.
    return shiftedExp(Acc(pixelStats[axis].max), joint.max) / joint.sum;
}

CCA_HOST_DEVICE size_t alignUp(size_t value, size_t alignment)
{
    return (value + alignment - 1) / alignment * alignment;
}

//! Byte offsets of the workspace regions: one probability matrix per axis (element type of the
//! op, B * prod(extent) * keyStride each, i.e. the B x H x W x (H + W - 1) attention map plus
//! padding), the per-(pixel, axis) softmax statistics, and (only when `partialSize` > 0: the
//! fp16 op with several axes) an output-shaped fp32 buffer in which the axes' contributions are
//! summed, so the output is rounded to fp16 once instead of once per axis.
struct WorkspaceLayout
{
    size_t probabilities[kMaxAxes];
    size_t stats;
    size_t partial;
    size_t bytes;
};

CCA_HOST_DEVICE WorkspaceLayout workspaceLayout(
    Problem const& p, size_t elementSize, size_t statsSize, size_t partialSize = 0)
{
    WorkspaceLayout layout{};
    size_t const pixels = static_cast<size_t>(p.batch) * static_cast<size_t>(spatialSize(p));
    size_t offset = 0;
    for (int d = 0; d < p.numAxes; ++d)
    {
        layout.probabilities[d] = offset;
        offset = alignUp(offset + pixels * static_cast<size_t>(paddedKeys(p.extent[d])) * elementSize,
            kRegionAlignment);
    }
    layout.stats = offset;
    offset = alignUp(offset + pixels * static_cast<size_t>(p.numAxes) * statsSize, kRegionAlignment);
    layout.partial = offset;
    layout.bytes = partialSize == 0
        ? offset
        : alignUp(offset + pixels * static_cast<size_t>(p.valueChannels) * partialSize, kRegionAlignment);
    return layout;
}

} // namespace cca
} // namespace ccnet
