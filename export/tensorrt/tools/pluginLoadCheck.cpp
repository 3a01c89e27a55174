/*
 * ccnet_plugin_check: loads libccnet_trt_plugin.so the way TensorRT does (dlopen, then the
 * exported setLoggerFinder and getCreators) and exercises every creator and plugin method that
 * works without a TensorRT runtime: names, versions, attribute validation, capability
 * interfaces, type / format negotiation, shape checks, workspace size, serialization, clones.
 *
 *   ccnet_plugin_check path/to/libccnet_trt_plugin.so          # no GPU needed
 *   ccnet_plugin_check path/to/libccnet_trt_plugin.so --run    # also enqueue on the GPU
 *
 * Without --run and without a usable CUDA device, enqueue must fail cleanly (an error through
 * the logger, -1) rather than crash. With --run it computes small fp32 problems (2D and
 * 3D) and compares them with a direct CPU evaluation of the definition.
 * Exit status: 0 when every check passed.
 */
#include "crissCrossAttentionPlugin/crissCrossAttentionMath.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "[ ok ]" : "[FAIL]", what.c_str());
    if (!ok)
    {
        ++gFailures;
    }
}

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, char const* message) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::printf("       logged %s: %s\n", severity == Severity::kWARNING ? "warning" : "error", message);
            (severity == Severity::kWARNING ? mWarnings : mErrors) += 1;
        }
    }
    int takeErrors()
    {
        return std::exchange(mErrors, 0);
    }
    int takeWarnings()
    {
        return std::exchange(mWarnings, 0);
    }

private:
    int mErrors{0};
    int mWarnings{0};
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

Dims makeDims(std::vector<int64_t> const& values)
{
    Dims dims{};
    dims.nbDims = static_cast<int32_t>(values.size());
    std::copy(values.begin(), values.end(), dims.d);
    return dims;
}

DynamicPluginTensorDesc dynamicDesc(Dims const& dims, Dims const& max, DataType type)
{
    DynamicPluginTensorDesc desc{};
    desc.desc.dims = dims;
    desc.desc.type = type;
    desc.desc.format = TensorFormat::kLINEAR;
    desc.min = max;
    desc.opt = max;
    desc.max = max;
    return desc;
}

PluginTensorDesc staticDesc(Dims const& dims, DataType type)
{
    PluginTensorDesc desc{};
    desc.dims = dims;
    desc.type = type;
    desc.format = TensorFormat::kLINEAR;
    return desc;
}

//! The definition, evaluated directly: every position attends to the set of positions that
//! differ from it along exactly one axis, plus itself once.
std::vector<double> directReference(std::vector<float> const& q, std::vector<float> const& k,
    std::vector<float> const& v, int batch, int qkChannels, int channels, std::vector<int> const& extent)
{
    int64_t plane = 1;
    for (int e : extent)
    {
        plane *= e;
    }
    int const n = static_cast<int>(extent.size());
    std::vector<int64_t> stride(extent.size(), 1);
    for (int d = n - 2; d >= 0; --d)
    {
        stride[d] = stride[d + 1] * extent[d + 1];
    }
    std::vector<double> out(static_cast<size_t>(batch) * channels * plane, 0.0);
    for (int b = 0; b < batch; ++b)
    {
        for (int64_t s = 0; s < plane; ++s)
        {
            std::vector<int64_t> keys{s};
            for (int d = 0; d < n; ++d)
            {
                int64_t const coordinate = (s / stride[d]) % extent[d];
                for (int64_t y = 0; y < extent[d]; ++y)
                {
                    if (y != coordinate)
                    {
                        keys.push_back(s + (y - coordinate) * stride[d]);
                    }
                }
            }
            std::vector<double> energy(keys.size(), 0.0);
            for (size_t j = 0; j < keys.size(); ++j)
            {
                for (int c = 0; c < qkChannels; ++c)
                {
                    size_t const base = (static_cast<size_t>(b) * qkChannels + c) * plane;
                    energy[j] += static_cast<double>(q[base + s]) * k[base + keys[j]];
                }
            }
            double const max = *std::max_element(energy.begin(), energy.end());
            double total = 0.0;
            for (double& e : energy)
            {
                e = std::exp(e - max);
                total += e;
            }
            for (int c = 0; c < channels; ++c)
            {
                size_t const base = (static_cast<size_t>(b) * channels + c) * plane;
                double sum = 0.0;
                for (size_t j = 0; j < keys.size(); ++j)
                {
                    sum += energy[j] / total * v[base + keys[j]];
                }
                out[base + s] = sum;
            }
        }
    }
    return out;
}

//! Enqueue one fp32 problem through the plugin's runtime interface and compare.
void runOnDevice(IPluginV3OneRuntime* runtime, IPluginV3OneBuild* build, int batch, int qkChannels, int channels,
    std::vector<int> const& extent, std::string const& label)
{
    int64_t plane = 1;
    for (int e : extent)
    {
        plane *= e;
    }
    std::vector<int64_t> qShape{batch, qkChannels};
    std::vector<int64_t> vShape{batch, channels};
    for (int e : extent)
    {
        qShape.push_back(e);
        vShape.push_back(e);
    }
    std::mt19937 generator(1234);
    std::normal_distribution<float> normal(0.f, 1.f);
    auto randomVector = [&](size_t size) {
        std::vector<float> values(size);
        for (float& x : values)
        {
            x = normal(generator);
        }
        return values;
    };
    size_t const qkSize = static_cast<size_t>(batch) * qkChannels * plane;
    size_t const vSize = static_cast<size_t>(batch) * channels * plane;
    std::vector<float> const q = randomVector(qkSize);
    std::vector<float> const k = randomVector(qkSize);
    std::vector<float> const v = randomVector(vSize);

    DynamicPluginTensorDesc const dyn[3] = {dynamicDesc(makeDims(qShape), makeDims(qShape), DataType::kFLOAT),
        dynamicDesc(makeDims(qShape), makeDims(qShape), DataType::kFLOAT),
        dynamicDesc(makeDims(vShape), makeDims(vShape), DataType::kFLOAT)};
    size_t const workspaceBytes = build->getWorkspaceSize(dyn, 3, &dyn[2], 1);
    PluginTensorDesc const in[3] = {staticDesc(makeDims(qShape), DataType::kFLOAT),
        staticDesc(makeDims(qShape), DataType::kFLOAT), staticDesc(makeDims(vShape), DataType::kFLOAT)};
    PluginTensorDesc const outDesc = staticDesc(makeDims(vShape), DataType::kFLOAT);

    void* dq = nullptr;
    void* dk = nullptr;
    void* dv = nullptr;
    void* dout = nullptr;
    void* workspace = nullptr;
    bool ok = cudaMalloc(&dq, qkSize * 4) == cudaSuccess && cudaMalloc(&dk, qkSize * 4) == cudaSuccess
        && cudaMalloc(&dv, vSize * 4) == cudaSuccess && cudaMalloc(&dout, vSize * 4) == cudaSuccess
        && cudaMalloc(&workspace, std::max<size_t>(workspaceBytes, 1)) == cudaSuccess;
    ok = ok && cudaMemcpy(dq, q.data(), qkSize * 4, cudaMemcpyHostToDevice) == cudaSuccess
        && cudaMemcpy(dk, k.data(), qkSize * 4, cudaMemcpyHostToDevice) == cudaSuccess
        && cudaMemcpy(dv, v.data(), vSize * 4, cudaMemcpyHostToDevice) == cudaSuccess;
    check(ok, label + ": device buffers");
    if (ok)
    {
        void const* inputs[3] = {dq, dk, dv};
        void* outputs[1] = {dout};
        check(runtime->onShapeChange(in, 3, &outDesc, 1) == 0, label + ": onShapeChange");
        check(runtime->enqueue(in, &outDesc, inputs, outputs, workspace, nullptr) == 0, label + ": enqueue");
        std::vector<float> result(vSize);
        bool const copied = cudaDeviceSynchronize() == cudaSuccess
            && cudaMemcpy(result.data(), dout, vSize * 4, cudaMemcpyDeviceToHost) == cudaSuccess;
        check(copied, label + ": kernel ran");
        std::vector<double> const expected = directReference(q, k, v, batch, qkChannels, channels, extent);
        double maxError = 0.0;
        double scale = 0.0;
        for (size_t i = 0; i < vSize; ++i)
        {
            maxError = std::max(maxError, std::abs(result[i] - expected[i]));
            scale = std::max(scale, std::abs(expected[i]));
        }
        char text[128];
        std::snprintf(text, sizeof(text), ": fp32 relative error %.2e <= 1e-5", maxError / scale);
        check(copied && maxError <= 1e-5 * scale, label + text);
    }
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(workspace);
}

void checkCreator(IPluginCreatorInterface* base, RecordingLogger& logger, bool runOnGpu)
{
    std::string const kind = base->getInterfaceInfo().kind;
    check(kind == "PLUGIN CREATOR_V3ONE", "creator interface is IPluginCreatorV3One (" + kind + ")");
    auto* creator = static_cast<IPluginCreatorV3One*>(base);
    std::string const name = creator->getPluginName();
    int const spatialDims = name == "CrissCrossAttention3d" ? 3 : 2;
    check(std::string(creator->getPluginVersion()) == "1", name + ": version \"1\"");
    std::printf("       namespace \"%s\"\n", creator->getPluginNamespace());
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && names->nbFields >= 0, name + ": getFieldNames");

    // As the ONNX parser passes the node attributes (strings without a terminating NUL).
    std::string const ns = creator->getPluginNamespace();
    PluginField const good[] = {PluginField("plugin_version", "1", PluginFieldType::kCHAR, 1),
        PluginField("plugin_namespace", ns.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(ns.size()))};
    PluginFieldCollection goodFields{2, good};
    IPluginV3* plugin = creator->createPlugin("cca", &goodFields, TensorRTPhase::kBUILD);
    check(plugin != nullptr && logger.takeErrors() == 0, name + ": createPlugin with the ONNX node's attributes");

    PluginField const badVersion[] = {PluginField("plugin_version", "2", PluginFieldType::kCHAR, 1)};
    PluginFieldCollection badVersionFields{1, badVersion};
    IPluginV3* rejected = creator->createPlugin("cca", &badVersionFields, TensorRTPhase::kBUILD);
    check(rejected == nullptr && logger.takeErrors() == 1, name + ": plugin_version \"2\" rejected with an error");
    delete rejected;

    int32_t const alpha = 3;
    PluginField const unknown[] = {PluginField("alpha", &alpha, PluginFieldType::kINT32, 1)};
    PluginFieldCollection unknownFields{1, unknown};
    IPluginV3* tolerant = creator->createPlugin("cca", &unknownFields, TensorRTPhase::kBUILD);
    check(tolerant != nullptr && logger.takeWarnings() == 1, name + ": unknown attribute ignored with a warning");
    delete tolerant;
    if (plugin == nullptr)
    {
        return;
    }

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && build != nullptr && runtime != nullptr, name + ": core, build and runtime capabilities");
    if (core == nullptr || build == nullptr || runtime == nullptr)
    {
        delete plugin;
        return;
    }
    check(std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE"
            && std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD"
            && std::string(runtime->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME",
        name + ": capability interface kinds");
    check(name == core->getPluginName() && std::string(core->getPluginVersion()) == "1"
            && ns == core->getPluginNamespace(),
        name + ": plugin name, version and namespace match the creator");
    check(build->getNbOutputs() == 1, name + ": one output");

    DataType const halves[3] = {DataType::kHALF, DataType::kHALF, DataType::kHALF};
    DataType const mixed[3] = {DataType::kFLOAT, DataType::kHALF, DataType::kFLOAT};
    DataType const ints[3] = {DataType::kINT32, DataType::kINT32, DataType::kINT32};
    DataType outType = DataType::kFLOAT;
    check(build->getOutputDataTypes(&outType, 1, halves, 3) == 0 && outType == DataType::kHALF,
        name + ": fp16 in -> fp16 out");
    check(build->getOutputDataTypes(&outType, 1, mixed, 3) != 0 && logger.takeErrors() == 1,
        name + ": mixed input types rejected");
    check(build->getOutputDataTypes(&outType, 1, ints, 3) != 0 && logger.takeErrors() == 1,
        name + ": int32 rejected");

    // Shapes: B=2, Cq=3, C=5, spatial (4, 6) or (3, 4, 6); -1 marks a dynamic dimension.
    std::vector<int64_t> qShape{2, 3};
    std::vector<int64_t> vShape{2, 5};
    std::vector<int64_t> dynamicShape{-1, 3};
    std::vector<int64_t> dynamicValue{-1, 5};
    std::vector<int> extent;
    for (int d = 0; d < spatialDims; ++d)
    {
        int const size = d + 1 == spatialDims ? 6 : 4 - d;
        extent.push_back(size);
        qShape.push_back(size);
        vShape.push_back(size);
        dynamicShape.push_back(-1);
        dynamicValue.push_back(-1);
    }
    std::vector<int64_t> kWrong = qShape;
    kWrong.back() += 1;

    DynamicPluginTensorDesc formats[4] = {dynamicDesc(makeDims(qShape), makeDims(qShape), DataType::kHALF),
        dynamicDesc(makeDims(qShape), makeDims(qShape), DataType::kHALF),
        dynamicDesc(makeDims(vShape), makeDims(vShape), DataType::kHALF),
        dynamicDesc(makeDims(vShape), makeDims(vShape), DataType::kHALF)};
    bool allHalf = true;
    for (int32_t pos = 0; pos < 4; ++pos)
    {
        allHalf = allHalf && build->supportsFormatCombination(pos, formats, 3, 1);
    }
    check(allHalf, name + ": fp16 linear accepted for every tensor");
    formats[2].desc.type = DataType::kFLOAT;
    check(!build->supportsFormatCombination(2, formats, 3, 1), name + ": v type must follow q");
    formats[2].desc.type = DataType::kHALF;
    formats[1].desc.format = TensorFormat::kHWC8;
    check(!build->supportsFormatCombination(1, formats, 3, 1), name + ": non-linear format rejected");
    formats[0].desc.type = DataType::kINT8;
    check(!build->supportsFormatCombination(0, formats, 3, 1), name + ": int8 rejected");

    DynamicPluginTensorDesc const dynamic[3]
        = {dynamicDesc(makeDims(dynamicShape), makeDims(qShape), DataType::kFLOAT),
            dynamicDesc(makeDims(dynamicShape), makeDims(qShape), DataType::kFLOAT),
            dynamicDesc(makeDims(dynamicValue), makeDims(vShape), DataType::kFLOAT)};
    check(build->configurePlugin(dynamic, 3, &dynamic[2], 1) == 0 && logger.takeErrors() == 0,
        name + ": configurePlugin with dynamic dimensions");
    DynamicPluginTensorDesc const inconsistent[3]
        = {dynamicDesc(makeDims(qShape), makeDims(qShape), DataType::kFLOAT),
            dynamicDesc(makeDims(kWrong), makeDims(kWrong), DataType::kFLOAT),
            dynamicDesc(makeDims(vShape), makeDims(vShape), DataType::kFLOAT)};
    check(build->configurePlugin(inconsistent, 3, &inconsistent[2], 1) != 0 && logger.takeErrors() == 1,
        name + ": q / k shape mismatch rejected");

    ccnet::cca::Problem problem{2, 3, 5, spatialDims, {1, 1, 1}};
    for (int d = 0; d < spatialDims; ++d)
    {
        problem.extent[d] = extent[static_cast<size_t>(d)];
    }
    // fp32: no partial-sum buffer; the launcher's alignment slack on top.
    size_t const expected = ccnet::cca::workspaceLayout(problem, 4, 8).bytes + ccnet::cca::kWorkspaceSlack;
    size_t const workspace = build->getWorkspaceSize(dynamic, 3, &dynamic[2], 1);
    check(workspace == expected && workspace > 0,
        name + ": workspace " + std::to_string(workspace) + " B for the profile maximum");
    // fp16 with several axes: the axes are summed in an fp32, output-shaped partial buffer.
    size_t const expectedHalf
        = ccnet::cca::workspaceLayout(problem, 2, 8, sizeof(float)).bytes + ccnet::cca::kWorkspaceSlack;
    size_t const workspaceHalf = build->getWorkspaceSize(formats, 3, &formats[3], 1);
    check(workspaceHalf == expectedHalf
            && expectedHalf >= ccnet::cca::workspaceLayout(problem, 2, 8).bytes
                    + sizeof(float) * static_cast<size_t>(problem.batch * problem.valueChannels),
        name + ": fp16 workspace " + std::to_string(workspaceHalf) + " B includes the fp32 partial sums");

    PluginTensorDesc const in[3] = {staticDesc(makeDims(qShape), DataType::kFLOAT),
        staticDesc(makeDims(qShape), DataType::kFLOAT), staticDesc(makeDims(vShape), DataType::kFLOAT)};
    PluginTensorDesc const out = staticDesc(makeDims(vShape), DataType::kFLOAT);
    check(runtime->onShapeChange(in, 3, &out, 1) == 0, name + ": onShapeChange");
    PluginTensorDesc const wrongRank[3] = {staticDesc(makeDims({2, 3, 4}), DataType::kFLOAT),
        staticDesc(makeDims({2, 3, 4}), DataType::kFLOAT), staticDesc(makeDims({2, 5, 4}), DataType::kFLOAT)};
    check(runtime->onShapeChange(wrongRank, 3, &out, 1) != 0 && logger.takeErrors() == 1,
        name + ": wrong rank rejected");

    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    check(serialized != nullptr && serialized->nbFields == 0, name + ": nothing to serialize");
    IPluginV3* deserialized = creator->createPlugin("cca", serialized, TensorRTPhase::kRUNTIME);
    check(deserialized != nullptr, name + ": re-created from its serialized fields");
    delete deserialized;
    IPluginV3* cloned = plugin->clone();
    IPluginV3* attached = runtime->attachToContext(nullptr);
    check(cloned != nullptr && attached != nullptr, name + ": clone and attachToContext");
    delete cloned;
    delete attached;

    if (runOnGpu)
    {
        runOnDevice(runtime, build, 2, 3, 5, extent, name + " on the GPU");
        if (spatialDims == 2)
        {
            runOnDevice(runtime, build, 1, 8, 40, {33, 70}, name + " on the GPU, 33x70");
        }
        else
        {
            runOnDevice(runtime, build, 1, 8, 40, {5, 17, 30}, name + " on the GPU, 5x17x30");
        }
    }
    else if (int devices = 0; cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
    {
        std::printf("       a CUDA device is present: run with --run to enqueue on it\n");
    }
    else
    {
        // No usable device: enqueue must report the CUDA error and fail, not crash.
        std::vector<float> dummy(64);
        void const* inputs[3] = {dummy.data(), dummy.data(), dummy.data()};
        void* outputs[1] = {dummy.data()};
        int32_t const status = runtime->enqueue(in, &out, inputs, outputs, dummy.data(), nullptr);
        int const errors = logger.takeErrors();
        std::printf("       enqueue without a device: status %d, %d error(s) logged\n", status, errors);
        check(status != 0 ? errors == 1 : true, name + ": enqueue failure reported through the logger");
    }
    delete plugin;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr, "usage: %s path/to/libccnet_trt_plugin.so [--run]\n", argv[0]);
        return 2;
    }
    bool const runOnGpu = argc > 2 && std::strcmp(argv[2], "--run") == 0;
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    check(library != nullptr, std::string("dlopen ") + argv[1] + (library ? "" : std::string(": ") + dlerror()));
    if (library == nullptr)
    {
        return 1;
    }
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    check(setLoggerFinder != nullptr && getCreators != nullptr, "exports setLoggerFinder and getCreators");
    if (setLoggerFinder == nullptr || getCreators == nullptr)
    {
        return 1;
    }
    static RecordingLogger logger;
    static Finder finder(&logger);
    setLoggerFinder(&finder);
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    std::vector<std::string> names;
    for (int32_t i = 0; creators != nullptr && i < count; ++i)
    {
        names.emplace_back(static_cast<IPluginCreatorV3One*>(creators[i])->getPluginName());
    }
    std::sort(names.begin(), names.end());
    check(names == std::vector<std::string>{"CrissCrossAttention", "CrissCrossAttention3d"},
        "getCreators lists CrissCrossAttention and CrissCrossAttention3d");
    for (int32_t i = 0; creators != nullptr && i < count; ++i)
    {
        checkCreator(creators[i], logger, runOnGpu);
    }
    std::printf("%s: %d check(s) failed\n", gFailures == 0 ? "PASSED" : "FAILED", gFailures);
    // The library stays loaded: TensorRT keeps plugin libraries for the life of the process too.
    return gFailures == 0 ? 0 : 1;
}
