/*
 * Host-only run of the criss-cross attention kernels' math, for checking it without a GPU.
 *
 * It follows the two kernels of crissCrossAttentionKernel.cu step by step with the very functions
 * they use (crissCrossAttentionMath.h): the same workspace layout, line / row / statistics
 * indexing, self-key mask, tiled online-softmax statistics, joint scale and per-axis
 * accumulation into the output. Only the parallel schedule (blocks, shared memory, tensor
 * cores) is replaced by plain loops. tests/export/test_native_sources.py builds it as a shared
 * library with g++ and compares it with model.axial.axial_attention_reference.
 *
 * Build: g++ -std=c++17 -O2 -shared -fPIC crissCrossAttentionHostCheck.cpp -o libccahost.so
 */
#include "crissCrossAttentionMath.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace
{

using namespace ccnet::cca;

bool makeProblem(int batch, int qkChannels, int valueChannels, int numAxes, int const* extent, Problem& problem)
{
    if (numAxes < 1 || numAxes > kMaxAxes || extent == nullptr || batch < 0 || qkChannels < 0 || valueChannels < 0)
    {
        return false;
    }
    problem = Problem{batch, qkChannels, valueChannels, numAxes, {1, 1, 1}};
    for (int d = 0; d < numAxes; ++d)
    {
        if (extent[d] < 0)
        {
            return false;
        }
        problem.extent[d] = extent[d];
    }
    return true;
}

//! Kernel 1 for one axis: energies, tiled statistics (keyTile keys at a time, merged as the
//! device merges its 64-key tiles), numerators exp(e - max) with zero padding.
template <typename Acc>
void energyStats(Acc const* q, Acc const* k, Acc* probs, RowStats<Acc>* stats, Problem const& p, int axis, int keyTile)
{
    Axis const a = axisOf(p, axis);
    int64_t const plane = spatialSize(p);
    std::vector<Acc> energies(static_cast<size_t>(a.length));
    for (int64_t b = 0; b < p.batch; ++b)
    {
        Acc const* qb = q + b * p.qkChannels * plane;
        Acc const* kb = k + b * p.qkChannels * plane;
        for (int64_t o = 0; o < a.outer; ++o)
        {
            for (int64_t r = 0; r < a.inner; ++r)
            {
                for (int x = 0; x < a.length; ++x)
                {
                    int64_t const pixel = spatialOffset(a, o, x, r);
                    for (int y = 0; y < a.length; ++y)
                    {
                        int64_t const key = spatialOffset(a, o, y, r);
                        Acc e = 0;
                        for (int c = 0; c < p.qkChannels; ++c)
                        {
                            e += qb[c * plane + pixel] * kb[c * plane + key];
                        }
                        energies[static_cast<size_t>(y)]
                            = isMaskedKey(axis, p.numAxes, x, y) ? negativeInfinity<Acc>() : e;
                    }
                    RowStats<Acc> row = emptyStats<Acc>();
                    for (int y0 = 0; y0 < a.length; y0 += keyTile)
                    {
                        int const end = y0 + keyTile < a.length ? y0 + keyTile : a.length;
                        RowStats<Acc> tile{negativeInfinity<Acc>(), Acc(0)};
                        for (int y = y0; y < end; ++y)
                        {
                            tile.max = energies[static_cast<size_t>(y)] > tile.max ? energies[static_cast<size_t>(y)]
                                                                                    : tile.max;
                        }
                        for (int y = y0; y < end; ++y)
                        {
                            tile.sum += shiftedExp(energies[static_cast<size_t>(y)], tile.max);
                        }
                        row = mergeStats(row, tile);
                    }
                    Acc* numerators = probs + probabilityRow(a, lineIndex(a, b, o, r), x);
                    for (int y = 0; y < a.keyStride; ++y)
                    {
                        numerators[y] = y < a.length ? shiftedExp(energies[static_cast<size_t>(y)], row.max) : Acc(0);
                    }
                    stats[statsIndex(p, b, pixel, axis)] = row;
                }
            }
        }
    }
}

//! Kernel 2 for one axis: out (+)= sum over keys of v * numerator * joint scale.
template <typename Acc>
void aggregate(Acc const* v, Acc const* probs, RowStats<Acc> const* stats, Acc* out, Problem const& p, int axis)
{
    Axis const a = axisOf(p, axis);
    int64_t const plane = spatialSize(p);
    for (int64_t b = 0; b < p.batch; ++b)
    {
        for (int64_t o = 0; o < a.outer; ++o)
        {
            for (int64_t r = 0; r < a.inner; ++r)
            {
                for (int x = 0; x < a.length; ++x)
                {
                    int64_t const pixel = spatialOffset(a, o, x, r);
                    Acc const scale = jointScale<Acc>(stats + statsIndex(p, b, pixel, 0), p.numAxes, axis);
                    Acc const* numerators = probs + probabilityRow(a, lineIndex(a, b, o, r), x);
                    for (int c = 0; c < p.valueChannels; ++c)
                    {
                        Acc const* vc = v + (b * p.valueChannels + c) * plane;
                        Acc sum = 0;
                        for (int y = 0; y < a.keyStride; ++y) // the padding is zero, as on the device
                        {
                            Acc const value = y < a.length ? vc[spatialOffset(a, o, y, r)] : Acc(0);
                            sum += value * (numerators[y] * scale);
                        }
                        Acc& target = out[(b * p.valueChannels + c) * plane + pixel];
                        target = axis == 0 ? sum : target + sum;
                    }
                }
            }
        }
    }
}

template <typename Acc>
int forward(Acc const* q, Acc const* k, Acc const* v, Acc* out, int batch, int qkChannels, int valueChannels,
    int numAxes, int const* extent, void* workspace, size_t workspaceBytes, int keyTile)
{
    Problem problem{};
    if (!makeProblem(batch, qkChannels, valueChannels, numAxes, extent, problem) || keyTile < 1)
    {
        return 1;
    }
    if (batch == 0 || valueChannels == 0 || spatialSize(problem) == 0)
    {
        return 0;
    }
    WorkspaceLayout const layout = workspaceLayout(problem, sizeof(Acc), sizeof(RowStats<Acc>));
    if (workspace == nullptr || workspaceBytes < layout.bytes)
    {
        return 2;
    }
    auto* const bytes = static_cast<unsigned char*>(workspace);
    auto* const stats = reinterpret_cast<RowStats<Acc>*>(bytes + layout.stats);
    for (int d = 0; d < numAxes; ++d)
    {
        energyStats(q, k, reinterpret_cast<Acc*>(bytes + layout.probabilities[d]), stats, problem, d, keyTile);
    }
    for (int d = 0; d < numAxes; ++d)
    {
        aggregate(v, reinterpret_cast<Acc const*>(bytes + layout.probabilities[d]), stats, out, problem, d);
    }
    return 0;
}

} // namespace

extern "C"
{

    //! Workspace layout for element (and statistics) precision `elementSize` (4 or 8): writes the
    //! byte offsets of the probability regions (numAxes of them) and of the statistics, returns
    //! the total byte count (0 for an invalid shape).
    size_t ccaHostWorkspaceLayout(int batch, int numAxes, int const* extent, int elementSize, size_t* offsets)
    {
        Problem problem{};
        if (!makeProblem(batch, 0, 0, numAxes, extent, problem) || (elementSize != 4 && elementSize != 8))
        {
            return 0;
        }
        size_t const statsSize = elementSize == 4 ? sizeof(RowStats<float>) : sizeof(RowStats<double>);
        WorkspaceLayout const layout = workspaceLayout(problem, static_cast<size_t>(elementSize), statsSize);
        if (offsets != nullptr)
        {
            for (int d = 0; d < numAxes; ++d)
            {
                offsets[d] = layout.probabilities[d];
            }
            offsets[numAxes] = layout.stats;
        }
        return layout.bytes;
    }

    //! Key-row padding of an axis of this length (what the kernels allocate per row).
    int ccaHostPaddedKeys(int length)
    {
        return paddedKeys(length);
    }

    int ccaHostForwardF32(float const* q, float const* k, float const* v, float* out, int batch, int qkChannels,
        int valueChannels, int numAxes, int const* extent, void* workspace, size_t workspaceBytes, int keyTile)
    {
        return forward<float>(
            q, k, v, out, batch, qkChannels, valueChannels, numAxes, extent, workspace, workspaceBytes, keyTile);
    }

    int ccaHostForwardF64(double const* q, double const* k, double const* v, double* out, int batch, int qkChannels,
        int valueChannels, int numAxes, int const* extent, void* workspace, size_t workspaceBytes, int keyTile)
    {
        return forward<double>(
            q, k, v, out, batch, qkChannels, valueChannels, numAxes, extent, workspace, workspaceBytes, keyTile);
    }

} // extern "C"
