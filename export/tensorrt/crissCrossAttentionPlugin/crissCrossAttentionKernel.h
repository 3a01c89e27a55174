/*
 * Criss-cross attention CUDA kernels: the C API shared by the TensorRT plugin and the PyTorch
 * extension (export/cuda_ext.py).
 *
 * 2D: q, k (B, Cq, H, W), v (B, C, H, W) -> out (B, C, H, W). Each pixel attends to its column
 * and its row, itself once (H + W - 1 keys), one softmax over all of them, no gamma, no residual.
 * 3D: q, k (B, Cq, T, H, W), v (B, C, T, H, W): time line, column and row (T + H + W - 2 keys).
 * All tensors dense and contiguous (NCHW / NCDHW). float: fp32 throughout; __half: fp16 storage,
 * fp32 energies, softmax and accumulation.
 *
 * Every launcher is asynchronous on `stream`, returns the first CUDA error it meets and does
 * nothing for an empty problem (any size 0). `workspace` must hold the bytes the matching
 * ...WorkspaceSize() function returns for the same sizes and element type (it may be null when
 * that is 0); it needs no initialisation and is fully rewritten by every call. Any alignment
 * will do: the size includes the slack to align it up internally (kWorkspaceSlack). Device
 * attributes are read once per device and cached; launch errors are checked once per call.
 */
#pragma once

#include <cstddef>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace ccnet
{
namespace cca
{

//! How values are aggregated. kAuto: tensor cores for fp16 on sm_70 and newer, CUDA cores
//! otherwise (fp32 always: it meets the 1e-5 agreement). The explicit choices exist so that
//! tests can check both paths on one GPU. kTensorCoreTf32 (opt-in, sm_80 and newer) also runs
//! fp32 on tensor cores, with values and probabilities rounded to TF32: expected error about
//! 1e-3 of the largest output instead of 1e-5 (bench/gpu_check.py measures it); fp16 runs as
//! with kTensorCore.
enum class Aggregation : int
{
    kAuto = 0,
    kSimt = 1,
    kTensorCore = 2,
    kTensorCoreTf32 = 3,
};

struct LaunchOptions
{
    Aggregation aggregation{Aggregation::kAuto};
    //! Compute the energies twice (statistics, then probabilities) instead of keeping whole
    //! rows in shared memory. Chosen automatically for rows too long for shared memory; forcing
    //! it lets tests cover that path at small sizes.
    bool recomputeEnergies{false};
};

//! Workspace bytes for `numAxes` (1 to 3) spatial axes of the given extents. The value channels
//! count for fp16 with several axes: the axes' partial sums are kept in fp32 (one output-shaped
//! fp32 buffer) and the output is rounded once.
size_t crissCrossAttentionWorkspaceSize(
    int batch, int valueChannels, int numAxes, int const* extent, size_t elementSize);
size_t crissCrossAttention2dWorkspaceSize(int batch, int valueChannels, int height, int width, size_t elementSize);
size_t crissCrossAttention3dWorkspaceSize(
    int batch, int valueChannels, int frames, int height, int width, size_t elementSize);

//! The general launcher (1 to 3 spatial axes); the 2d/3d launchers below call it.
template <typename T>
cudaError_t launchCrissCrossAttention(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int numAxes, int const* extent, void* workspace, cudaStream_t stream,
    LaunchOptions options = LaunchOptions{});

template <typename T>
cudaError_t launchCrissCrossAttention2d(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int height, int width, void* workspace, cudaStream_t stream);

template <typename T>
cudaError_t launchCrissCrossAttention3d(T const* q, T const* k, T const* v, T* out, int batch, int qkChannels,
    int valueChannels, int frames, int height, int width, void* workspace, cudaStream_t stream);

// Instantiated in crissCrossAttentionKernel.cu for float and __half only.
extern template cudaError_t launchCrissCrossAttention<float>(float const*, float const*, float const*, float*, int,
    int, int, int, int const*, void*, cudaStream_t, LaunchOptions);
extern template cudaError_t launchCrissCrossAttention<__half>(__half const*, __half const*, __half const*, __half*,
    int, int, int, int, int const*, void*, cudaStream_t, LaunchOptions);
extern template cudaError_t launchCrissCrossAttention2d<float>(
    float const*, float const*, float const*, float*, int, int, int, int, int, void*, cudaStream_t);
extern template cudaError_t launchCrissCrossAttention2d<__half>(
    __half const*, __half const*, __half const*, __half*, int, int, int, int, int, void*, cudaStream_t);
extern template cudaError_t launchCrissCrossAttention3d<float>(
    float const*, float const*, float const*, float*, int, int, int, int, int, int, void*, cudaStream_t);
extern template cudaError_t launchCrissCrossAttention3d<__half>(
    __half const*, __half const*, __half const*, __half*, int, int, int, int, int, int, void*, cudaStream_t);

} // namespace cca
} // namespace ccnet
