/*
 * PyTorch binding of the criss-cross attention kernels (forward only). Built and loaded by
 * export/cuda_ext.py with torch.utils.cpp_extension.load, together with
 * crissCrossAttentionKernel.cu: the very kernels the TensorRT plugin runs.
 */
#include "crissCrossAttentionKernel.h"

// c10's stream and guard headers, not ATen/cuda/CUDAContext.h: that one also needs the cuBLAS /
// cuSPARSE headers, which minimal CUDA toolkits lack.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <climits>
#include <vector>

namespace
{

using ccnet::cca::Aggregation;
using ccnet::cca::LaunchOptions;

int checkedInt(int64_t value, char const* what)
{
    TORCH_CHECK(value >= 0 && value <= INT_MAX, "criss_cross_attention_cuda: ", what, " = ", value, " is out of range");
    return static_cast<int>(value);
}

//! q, k (B, Cq, *spatial), v (B, C, *spatial) with 2 or 3 spatial axes -> (B, C, *spatial).
torch::Tensor forward(torch::Tensor const& q, torch::Tensor const& k, torch::Tensor const& v, int64_t aggregation,
    bool recomputeEnergies)
{
    TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(), "criss_cross_attention_cuda: q, k, v must be CUDA tensors");
    TORCH_CHECK(q.device() == k.device() && q.device() == v.device(),
        "criss_cross_attention_cuda: q, k, v must be on one device");
    TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
        "criss_cross_attention_cuda: q, k, v must share a dtype");
    TORCH_CHECK(q.scalar_type() == torch::kFloat || q.scalar_type() == torch::kHalf,
        "criss_cross_attention_cuda: float32 or float16 only, got ", q.scalar_type());
    int64_t const rank = q.dim();
    TORCH_CHECK(rank == 4 || rank == 5, "criss_cross_attention_cuda: expected 4-D or 5-D inputs, got ", rank, "-D");
    TORCH_CHECK(k.sizes() == q.sizes(), "criss_cross_attention_cuda: q and k must have the same shape");
    TORCH_CHECK(v.dim() == rank && v.size(0) == q.size(0) && v.sizes().slice(2) == q.sizes().slice(2),
        "criss_cross_attention_cuda: v must share batch and spatial sizes with q");
    TORCH_CHECK(aggregation >= 0 && aggregation <= 3, "criss_cross_attention_cuda: unknown aggregation ", aggregation);

    c10::cuda::CUDAGuard const guard(q.device());
    // The kernels read dense NCHW / NCDHW memory.
    torch::Tensor const qc = q.contiguous();
    torch::Tensor const kc = k.contiguous();
    torch::Tensor const vc = v.contiguous();
    torch::Tensor out = torch::empty(vc.sizes(), vc.options().memory_format(at::MemoryFormat::Contiguous));

    int const numAxes = static_cast<int>(rank - 2);
    int extent[3] = {1, 1, 1};
    for (int d = 0; d < numAxes; ++d)
    {
        extent[d] = checkedInt(q.size(2 + d), "spatial size");
    }
    int const batch = checkedInt(q.size(0), "batch");
    int const qkChannels = checkedInt(q.size(1), "query/key channels");
    int const valueChannels = checkedInt(v.size(1), "value channels");
    size_t const bytes
        = ccnet::cca::crissCrossAttentionWorkspaceSize(batch, valueChannels, numAxes, extent, qc.element_size());
    // From PyTorch's caching allocator: no cudaMalloc per call, stream-ordered reuse.
    torch::Tensor workspace = torch::empty({static_cast<int64_t>(bytes)}, q.options().dtype(torch::kUInt8));

    LaunchOptions options;
    options.aggregation = static_cast<Aggregation>(aggregation);
    options.recomputeEnergies = recomputeEnergies;
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t status = cudaSuccess;
    if (qc.scalar_type() == torch::kFloat)
    {
        status = ccnet::cca::launchCrissCrossAttention<float>(qc.data_ptr<float>(), kc.data_ptr<float>(),
            vc.data_ptr<float>(), out.data_ptr<float>(), batch, qkChannels, valueChannels, numAxes, extent,
            workspace.data_ptr(), stream, options);
    }
    else
    {
        // at::Half and __half share their 16-bit layout.
        status = ccnet::cca::launchCrissCrossAttention<__half>(reinterpret_cast<__half const*>(qc.data_ptr<at::Half>()),
            reinterpret_cast<__half const*>(kc.data_ptr<at::Half>()),
            reinterpret_cast<__half const*>(vc.data_ptr<at::Half>()), reinterpret_cast<__half*>(out.data_ptr<at::Half>()),
            batch, qkChannels, valueChannels, numAxes, extent, workspace.data_ptr(), stream, options);
    }
    TORCH_CHECK(status == cudaSuccess, "criss_cross_attention_cuda: kernel launch failed: ", cudaGetErrorString(status));
    return out;
}

int64_t workspaceSize(int64_t batch, int64_t valueChannels, std::vector<int64_t> const& extent, int64_t elementSize)
{
    TORCH_CHECK(!extent.empty() && extent.size() <= 3, "workspace_size: 1 to 3 spatial sizes");
    int sizes[3] = {1, 1, 1};
    for (size_t d = 0; d < extent.size(); ++d)
    {
        sizes[d] = checkedInt(extent[d], "spatial size");
    }
    return static_cast<int64_t>(ccnet::cca::crissCrossAttentionWorkspaceSize(checkedInt(batch, "batch"),
        checkedInt(valueChannels, "value channels"), static_cast<int>(extent.size()), sizes,
        static_cast<size_t>(elementSize)));
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "Criss-cross attention CUDA kernels (forward only), shared with the TensorRT plugin";
    m.def("forward", &forward, "criss-cross attention forward (2D or 3D)", pybind11::arg("q"), pybind11::arg("k"),
        pybind11::arg("v"), pybind11::arg("aggregation") = 0, pybind11::arg("recompute_energies") = false);
    m.def("workspace_size", &workspaceSize, "workspace bytes of one call", pybind11::arg("batch"),
        pybind11::arg("value_channels"), pybind11::arg("extent"), pybind11::arg("element_size"));
}
