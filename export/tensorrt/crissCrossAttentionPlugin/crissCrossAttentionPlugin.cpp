#include "crissCrossAttentionPlugin.h"

#include "../common/pluginLogging.h"
#include "crissCrossAttentionKernel.h"

#include <cuda_fp16.h>

#include <climits>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>

using namespace nvinfer1;

namespace ccnet
{
namespace trt
{
namespace
{

// Registered names and version: these must match the ONNX node (domain "ccnet") written by the
// exporter and its plugin_version attribute.
constexpr char const* kPluginName2d{"CrissCrossAttention"};
constexpr char const* kPluginName3d{"CrissCrossAttention3d"};
constexpr char const* kPluginVersion{"1"};
// Attribute names as on the ONNX node.
constexpr char const* kVersionField{"plugin_version"};
constexpr char const* kNamespaceField{"plugin_namespace"};

constexpr int32_t kNbInputs{3}; // q, k, v
constexpr int32_t kNbOutputs{1};

char const* pluginName(int32_t spatialDims)
{
    return spatialDims == 3 ? kPluginName3d : kPluginName2d;
}

std::string dimsToString(Dims const& dims)
{
    std::string text = "(";
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        text += (i > 0 ? ", " : "") + std::to_string(dims.d[i]);
    }
    return text + ")";
}

//! A kCHAR plugin field as a string: the length may or may not count a terminating NUL.
std::string fieldString(PluginField const& field)
{
    if (field.type != PluginFieldType::kCHAR || field.data == nullptr || field.length < 0)
    {
        throw std::invalid_argument(
            std::string("attribute ") + (field.name != nullptr ? field.name : "?") + " must be a string");
    }
    std::string value(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    value.resize(std::strlen(value.c_str()));
    return value;
}

int toInt(int64_t value, char const* what)
{
    if (value < 0 || value > INT_MAX)
    {
        throw std::out_of_range(std::string(what) + " = " + std::to_string(value) + " is out of range");
    }
    return static_cast<int>(value);
}

//! Sizes of one call, read from runtime dimensions (q, k, v).
struct CallShape
{
    int batch;
    int qkChannels;
    int valueChannels;
    int extent[3];
};

CallShape callShape(Dims const& q, Dims const& v, int32_t spatialDims)
{
    CallShape shape{toInt(v.d[0], "batch"), toInt(q.d[1], "query/key channels"), toInt(v.d[1], "value channels"),
        {1, 1, 1}};
    for (int32_t d = 0; d < spatialDims; ++d)
    {
        shape.extent[d] = toInt(v.d[2 + d], "spatial size");
    }
    return shape;
}

size_t elementSize(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT: return sizeof(float);
    case DataType::kHALF: return sizeof(__half);
    default: throw std::invalid_argument("only kFLOAT and kHALF tensors are supported");
    }
}

} // namespace

// ---------------------------------------------------------------------------------------------
// CrissCrossAttentionPlugin
// ---------------------------------------------------------------------------------------------

CrissCrossAttentionPlugin::CrissCrossAttentionPlugin(int32_t spatialDims, std::string pluginNamespace)
    : mSpatialDims(spatialDims)
    , mNamespace(std::move(pluginNamespace))
{
    if (mSpatialDims != 2 && mSpatialDims != 3)
    {
        throw std::invalid_argument("criss-cross attention has 2 or 3 spatial dimensions");
    }
}

IPluginCapability* CrissCrossAttentionPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
        case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
        case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": " + e.what());
    }
    return nullptr;
}

IPluginV3* CrissCrossAttentionPlugin::clone() noexcept
{
    try
    {
        return new CrissCrossAttentionPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": clone failed: " + e.what());
    }
    return nullptr;
}

char const* CrissCrossAttentionPlugin::getPluginName() const noexcept
{
    return pluginName(mSpatialDims);
}

char const* CrissCrossAttentionPlugin::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* CrissCrossAttentionPlugin::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

void CrissCrossAttentionPlugin::checkShapes(Dims const& q, Dims const& k, Dims const& v) const
{
    int32_t const rank = 2 + mSpatialDims;
    std::string const layout = mSpatialDims == 3 ? "(B, C, T, H, W)" : "(B, C, H, W)";
    if (q.nbDims != rank || k.nbDims != rank || v.nbDims != rank)
    {
        throw std::invalid_argument("q, k, v must be " + layout + ", got " + dimsToString(q) + ", " + dimsToString(k)
            + ", " + dimsToString(v));
    }
    auto differ = [](int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; };
    for (int32_t i = 0; i < rank; ++i)
    {
        if (differ(q.d[i], k.d[i]))
        {
            throw std::invalid_argument("q and k must have the same shape, got " + dimsToString(q) + " and "
                + dimsToString(k));
        }
        if (i != 1 && differ(q.d[i], v.d[i]))
        {
            throw std::invalid_argument("v must share batch and spatial sizes with q, got v " + dimsToString(v)
                + " and q " + dimsToString(q));
        }
    }
}

int32_t CrissCrossAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            throw std::invalid_argument("expects 3 inputs (q, k, v) and 1 output");
        }
        checkShapes(in[0].desc.dims, in[1].desc.dims, in[2].desc.dims);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": configurePlugin: " + e.what());
    }
    return -1;
}

int32_t CrissCrossAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNbOutputs || nbInputs != kNbInputs)
        {
            throw std::invalid_argument("expects 3 inputs (q, k, v) and 1 output");
        }
        if (inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0])
        {
            throw std::invalid_argument("q, k and v must share one data type");
        }
        elementSize(inputTypes[0]); // throws for anything but fp32 / fp16
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": getOutputDataTypes: " + e.what());
    }
    return -1;
}

int32_t CrissCrossAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /* shapeInputs */, int32_t /* nbShapeInputs */, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& /* exprBuilder */) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            throw std::invalid_argument("expects 3 inputs (q, k, v) and 1 output");
        }
        int32_t const rank = 2 + mSpatialDims;
        for (int32_t i = 0; i < kNbInputs; ++i)
        {
            if (inputs[i].nbDims != rank)
            {
                throw std::invalid_argument("every input must have rank " + std::to_string(rank));
            }
        }
        outputs[0] = inputs[2]; // the output has v's shape (B, C, [T,] H, W)
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": getOutputShapes: " + e.what());
    }
    return -1;
}

bool CrissCrossAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0
            || pos >= kNbInputs + kNbOutputs)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        // The first tensor picks fp32 or fp16; every other one must follow it.
        if (pos == 0)
        {
            return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        }
        return desc.type == inOut[0].desc.type;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": supportsFormatCombination: " + e.what());
    }
    return false;
}

int32_t CrissCrossAttentionPlugin::getNbOutputs() const noexcept
{
    return kNbOutputs;
}

size_t CrissCrossAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /* outputs */, int32_t /* nbOutputs */) const noexcept
{
    try
    {
        if (inputs == nullptr || nbInputs != kNbInputs)
        {
            throw std::invalid_argument("expects 3 inputs (q, k, v)");
        }
        // The workspace grows with every size, so the profile maximum covers every runtime shape.
        Dims const& v = inputs[2].max;
        if (v.nbDims != 2 + mSpatialDims)
        {
            throw std::invalid_argument("v must have rank " + std::to_string(2 + mSpatialDims));
        }
        int extent[3] = {1, 1, 1};
        for (int32_t d = 0; d < mSpatialDims; ++d)
        {
            extent[d] = toInt(v.d[2 + d], "spatial size");
        }
        return cca::crissCrossAttentionWorkspaceSize(toInt(v.d[0], "batch"), toInt(v.d[1], "value channels"),
            mSpatialDims, extent, elementSize(inputs[2].desc.type));
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": getWorkspaceSize: " + e.what());
    }
    return 0;
}

int32_t CrissCrossAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            throw std::invalid_argument("expects 3 inputs (q, k, v) and 1 output");
        }
        checkShapes(in[0].dims, in[1].dims, in[2].dims);
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": onShapeChange: " + e.what());
    }
    return -1;
}

int32_t CrissCrossAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /* outputDesc */,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            throw std::invalid_argument("missing tensors");
        }
        CallShape const s = callShape(inputDesc[0].dims, inputDesc[2].dims, mSpatialDims);
        cudaError_t status = cudaSuccess;
        switch (inputDesc[0].type)
        {
        case DataType::kFLOAT:
            status = cca::launchCrissCrossAttention<float>(static_cast<float const*>(inputs[0]),
                static_cast<float const*>(inputs[1]), static_cast<float const*>(inputs[2]),
                static_cast<float*>(outputs[0]), s.batch, s.qkChannels, s.valueChannels, mSpatialDims, s.extent,
                workspace, stream);
            break;
        case DataType::kHALF:
            status = cca::launchCrissCrossAttention<__half>(static_cast<__half const*>(inputs[0]),
                static_cast<__half const*>(inputs[1]), static_cast<__half const*>(inputs[2]),
                static_cast<__half*>(outputs[0]), s.batch, s.qkChannels, s.valueChannels, mSpatialDims, s.extent,
                workspace, stream);
            break;
        default: throw std::invalid_argument("only kFLOAT and kHALF tensors are supported");
        }
        if (status != cudaSuccess)
        {
            throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(status));
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": enqueue: " + e.what());
    }
    return -1;
}

IPluginV3* CrissCrossAttentionPlugin::attachToContext(IPluginResourceContext* /* context */) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* CrissCrossAttentionPlugin::getFieldsToSerialize() noexcept
{
    // Parameter-free: the plugin name says 2D or 3D, so nothing needs to be stored.
    mSerializedFields.nbFields = 0;
    mSerializedFields.fields = nullptr;
    return &mSerializedFields;
}

// ---------------------------------------------------------------------------------------------
// CrissCrossAttentionPluginCreator
// ---------------------------------------------------------------------------------------------

CrissCrossAttentionPluginCreator::CrissCrossAttentionPluginCreator(int32_t spatialDims, std::string pluginNamespace)
    : mSpatialDims(spatialDims)
    , mNamespace(std::move(pluginNamespace))
{
    // Optional: the ONNX node carries them; the registry has already matched them to this creator.
    mFieldNames.emplace_back(kVersionField, nullptr, PluginFieldType::kCHAR, 0);
    mFieldNames.emplace_back(kNamespaceField, nullptr, PluginFieldType::kCHAR, 0);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

IPluginV3* CrissCrossAttentionPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /* phase */) noexcept
{
    try
    {
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            std::string const fieldName = field.name != nullptr ? field.name : "";
            if (fieldName == kVersionField)
            {
                std::string const version = fieldString(field);
                if (version != kPluginVersion)
                {
                    throw std::invalid_argument("plugin_version \"" + version + "\" is not supported (this library "
                        + "implements version " + kPluginVersion + ")");
                }
            }
            else if (fieldName == kNamespaceField)
            {
                std::string const requested = fieldString(field);
                if (requested != mNamespace)
                {
                    logWarning(std::string(getPluginName()) + ": node asks for plugin_namespace \"" + requested
                        + "\", creator is registered under \"" + mNamespace + "\"");
                }
            }
            else
            {
                // Newer exporters may add attributes: ignore them rather than fail the whole build.
                logWarning(std::string(getPluginName()) + ": ignoring unknown attribute \"" + fieldName + "\""
                    + (name != nullptr ? std::string(" on layer ") + name : std::string()));
            }
        }
        return new CrissCrossAttentionPlugin(mSpatialDims, mNamespace);
    }
    catch (std::exception const& e)
    {
        logError(std::string(getPluginName()) + ": createPlugin: " + e.what());
    }
    return nullptr;
}

PluginFieldCollection const* CrissCrossAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* CrissCrossAttentionPluginCreator::getPluginName() const noexcept
{
    return pluginName(mSpatialDims);
}

char const* CrissCrossAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kPluginVersion;
}

char const* CrissCrossAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return mNamespace.c_str();
}

} // namespace trt
} // namespace ccnet
