/*
 * Entry points of libccnet_trt_plugin.so, the ccnet TensorRT plugin library.
 *
 * TensorRT finds them by name when the library is loaded with IPluginRegistry::loadLibrary(),
 * `trtexec --dynamicPlugins=...` or `--setPluginsToSerialize`: getCreators() lists the V3 plugin
 * creators, setLoggerFinder() gives the library a route to the caller's logger. They are the
 * only symbols the library exports (it is built with hidden visibility).
 *
 * The plugin namespace defaults to "" (what the ONNX parser looks up for a node without a
 * plugin_namespace attribute). Set CCNET_TRT_PLUGIN_NAMESPACE before the library is loaded to
 * register the creators under another one.
 */
#include "common/pluginLogging.h"
#include "crissCrossAttentionPlugin/crissCrossAttentionPlugin.h"

#include <cstdint>
#include <cstdlib>
#include <string>

// Not TENSORRTAPI: that macro only exports while NVIDIA builds TensorRT itself
// (TENSORRT_BUILD_LIB) and is empty for everyone else.
#if defined(_WIN32)
#define CCNET_PLUGIN_EXPORT __declspec(dllexport)
#else
#define CCNET_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

namespace
{

std::string namespaceFromEnvironment()
{
    char const* const value = std::getenv("CCNET_TRT_PLUGIN_NAMESPACE");
    return value != nullptr ? std::string(value) : std::string();
}

} // namespace

extern "C" CCNET_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    // Function-local statics: built on first use, thread-safe, alive as long as the library.
    static ccnet::trt::CrissCrossAttentionPluginCreator crissCrossAttention2d(2, namespaceFromEnvironment());
    static ccnet::trt::CrissCrossAttentionPluginCreator crissCrossAttention3d(3, namespaceFromEnvironment());
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&crissCrossAttention2d, &crissCrossAttention3d};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

extern "C" CCNET_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    ccnet::trt::setLoggerFinder(finder);
}
