/*
 * TensorRT plugins CrissCrossAttention (2D) and CrissCrossAttention3d, version "1", on the
 * IPluginV3 interface (IPluginV3OneCore / IPluginV3OneBuild / IPluginV3OneRuntime).
 *
 * Inputs q, k (B, Cq, [T,] H, W) and v (B, C, [T,] H, W), one output shaped like v; fp32 or
 * fp16, linear (NCHW / NCDHW) layout, dynamic shapes. The op has no attributes: the ONNX node's
 * plugin_version / plugin_namespace are checked on creation and nothing is serialized.
 * See README.md in this folder.
 */
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace ccnet
{
namespace trt
{

class CrissCrossAttentionPlugin final : public nvinfer1::IPluginV3,
                                        public nvinfer1::IPluginV3OneCore,
                                        public nvinfer1::IPluginV3OneBuild,
                                        public nvinfer1::IPluginV3OneRuntime
{
public:
    //! spatialDims: 2 for CrissCrossAttention, 3 for CrissCrossAttention3d.
    CrissCrossAttentionPlugin(int32_t spatialDims, std::string pluginNamespace);
    CrissCrossAttentionPlugin(CrissCrossAttentionPlugin const&) = default;
    CrissCrossAttentionPlugin& operator=(CrissCrossAttentionPlugin const&) = delete;
    ~CrissCrossAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Throws std::invalid_argument naming the problem when the three input shapes do not fit
    //! together; dimensions still unknown (-1, build time) are not compared.
    void checkShapes(nvinfer1::Dims const& q, nvinfer1::Dims const& k, nvinfer1::Dims const& v) const;

    int32_t mSpatialDims;
    std::string mNamespace;
    nvinfer1::PluginFieldCollection mSerializedFields{};
};

class CrissCrossAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    CrissCrossAttentionPluginCreator(int32_t spatialDims, std::string pluginNamespace);
    ~CrissCrossAttentionPluginCreator() override = default;

    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    int32_t mSpatialDims;
    std::string mNamespace;
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace trt
} // namespace ccnet
