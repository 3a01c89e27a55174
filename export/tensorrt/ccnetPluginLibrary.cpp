/*
 * Entry points of libccnet_trt_plugin.so, the ccnet TensorRT plugin library.
 *
 * Two ways in, never registering a creator twice:
 *
 * 1. Loaded by the dynamic loader alone (LD_PRELOAD, Triton's
 *    `--backend-config=tensorrt,plugins=...`, `ctypes.CDLL`): a static initialiser finds the
 *    plugin registry of the TensorRT runtime already in the process and registers both creators
 *    there, as TensorRT's own plugin libraries do. The library does not link libnvinfer, so the
 *    registry is looked up at run time: `getPluginRegistry` in the global scope, else in any
 *    loaded `libnvinfer*` object (the full, lean or dispatch runtime, even when it was loaded
 *    with RTLD_LOCAL as Python's bindings do), else by loading `libnvinfer.so.<major>` the way a
 *    link dependency would be (the LD_PRELOAD case, where TensorRT comes later).
 * 2. `IPluginRegistry::loadLibrary()`, `trtexec --dynamicPlugins`: TensorRT dlopens the library
 *    (which runs 1.) and then asks getCreators() for the creators to register. getCreators() hands
 *    back those that 1. registered: it withdraws them from the registry first, so TensorRT's own
 *    registration succeeds and the creators belong to the library handle it returns
 *    (deregisterLibrary() then removes them). Creators that 1. could not register are simply
 *    listed.
 *
 * When the library is unloaded, creators it registered itself are withdrawn from the registry so
 * that no dangling pointer is left there.
 *
 * setLoggerFinder() gives the library a route to the caller's logger. These two are the only
 * symbols the library exports (it is built with hidden visibility).
 *
 * The plugin namespace defaults to "" (what the ONNX parser looks up for a node without a
 * plugin_namespace attribute). Set CCNET_TRT_PLUGIN_NAMESPACE before the library is loaded to
 * register the creators under another one.
 */
#include "common/pluginLogging.h"
#include "crissCrossAttentionPlugin/crissCrossAttentionPlugin.h"

#include <NvInferVersion.h>

#include <dlfcn.h>
#include <link.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
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

using nvinfer1::IPluginCreatorInterface;
using nvinfer1::IPluginRegistry;
using GetPluginRegistry = IPluginRegistry* (*) ();

constexpr char const* kRegistrySymbol{"getPluginRegistry"};
constexpr std::size_t kNbCreators{2};

std::string namespaceFromEnvironment()
{
    char const* const value = std::getenv("CCNET_TRT_PLUGIN_NAMESPACE");
    return value != nullptr ? std::string(value) : std::string();
}

//! Both creators, built on first use (thread-safe) and alive as long as the library.
struct Creators
{
    std::string pluginNamespace{namespaceFromEnvironment()};
    ccnet::trt::CrissCrossAttentionPluginCreator crissCrossAttention2d{2, pluginNamespace};
    ccnet::trt::CrissCrossAttentionPluginCreator crissCrossAttention3d{3, pluginNamespace};
    std::array<IPluginCreatorInterface*, kNbCreators> all{&crissCrossAttention2d, &crissCrossAttention3d};
};

Creators& creators()
{
    static Creators instance;
    return instance;
}

//! getPluginRegistry of a loaded object whose file name starts with libnvinfer.
int findInLoadedObject(dl_phdr_info* info, std::size_t /*size*/, void* data)
{
    char const* const path = info->dlpi_name;
    if (path == nullptr || path[0] == '\0')
    {
        return 0;
    }
    char const* const slash = std::strrchr(path, '/');
    char const* const base = slash != nullptr ? slash + 1 : path;
    if (std::strncmp(base, "libnvinfer", 10) != 0)
    {
        return 0;
    }
    // RTLD_NOLOAD: only a handle to what is already there (also for RTLD_LOCAL objects).
    void* const handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr)
    {
        return 0;
    }
    void* const symbol = dlsym(handle, kRegistrySymbol);
    dlclose(handle); // drops the reference NOLOAD added; the object stays loaded
    if (symbol == nullptr)
    {
        return 0;
    }
    *static_cast<void**>(data) = symbol;
    return 1;
}

GetPluginRegistry findRegistryFunction()
{
    void* symbol = dlsym(RTLD_DEFAULT, kRegistrySymbol);
    if (symbol == nullptr)
    {
        dl_iterate_phdr(findInLoadedObject, &symbol);
    }
    if (symbol == nullptr)
    {
        // No TensorRT in the process yet (LD_PRELOAD): load the runtime a link would have named.
        std::string const soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
        void* const handle = dlopen(soname.c_str(), RTLD_LAZY | RTLD_GLOBAL);
        symbol = handle != nullptr ? dlsym(handle, kRegistrySymbol) : nullptr;
    }
    return reinterpret_cast<GetPluginRegistry>(symbol);
}

//! The registration done when the library is loaded, and its undoing when it is unloaded.
class LoadTimeRegistration
{
public:
    LoadTimeRegistration()
    {
        try
        {
            Creators& all = creators();
            GetPluginRegistry const getRegistry = findRegistryFunction();
            mRegistry = getRegistry != nullptr ? getRegistry() : nullptr;
            if (mRegistry == nullptr)
            {
                // Not an error: IPluginRegistry::loadLibrary() still works through getCreators().
                return;
            }
            for (std::size_t i = 0; i < kNbCreators; ++i)
            {
                mRegistered[i] = mRegistry->registerCreator(*all.all[i], all.pluginNamespace.c_str());
            }
        }
        catch (...)
        {
            ccnet::trt::logError("could not register the plugin creators when the library was loaded");
        }
    }

    ~LoadTimeRegistration()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (std::size_t i = 0; i < kNbCreators; ++i)
        {
            if (mRegistered[i])
            {
                mRegistry->deregisterCreator(*creators().all[i]);
                mRegistered[i] = false;
            }
        }
    }

    LoadTimeRegistration(LoadTimeRegistration const&) = delete;
    LoadTimeRegistration& operator=(LoadTimeRegistration const&) = delete;

    //! Withdraw what was registered at load time: the caller (TensorRT's loadLibrary) is about to
    //! register every creator itself, and would fail on any already there.
    void handOver() noexcept
    {
        std::lock_guard<std::mutex> lock(mMutex);
        for (std::size_t i = 0; i < kNbCreators; ++i)
        {
            if (mRegistered[i])
            {
                mRegistry->deregisterCreator(*creators().all[i]);
                mRegistered[i] = false;
            }
        }
    }

private:
    std::mutex mMutex;
    IPluginRegistry* mRegistry{nullptr};
    std::array<bool, kNbCreators> mRegistered{};
};

LoadTimeRegistration gLoadTimeRegistration;

} // namespace

extern "C" CCNET_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    gLoadTimeRegistration.handOver();
    nbCreators = static_cast<int32_t>(kNbCreators);
    return creators().all.data();
}

extern "C" CCNET_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    ccnet::trt::setLoggerFinder(finder);
}
