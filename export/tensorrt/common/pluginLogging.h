/*
 * Logging for the ccnet TensorRT plugin library.
 *
 * TensorRT hands the library an ILoggerFinder through the exported setLoggerFinder() (see
 * ccnetPluginLibrary.cpp); messages go to the logger of the engine or context that called the
 * plugin. Before that (or if TensorRT never calls it) errors still reach stderr, so a failing
 * plugin is never silent.
 */
#pragma once

#include <NvInferRuntime.h>

#include <string>

namespace ccnet
{
namespace trt
{

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

inline void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

inline void logWarning(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kWARNING, message);
}

} // namespace trt
} // namespace ccnet
