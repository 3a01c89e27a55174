#include "pluginLogging.h"

#include <atomic>
#include <cstdio>

namespace ccnet
{
namespace trt
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const text = "[ccnet plugin] " + message;
        nvinfer1::ILoggerFinder* const finder = gLoggerFinder.load();
        // findLogger() must run on the thread of the calling plugin method: look it up per message.
        nvinfer1::ILogger* const logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
        // Logging must never throw out of a noexcept plugin method.
    }
}

} // namespace trt
} // namespace ccnet
