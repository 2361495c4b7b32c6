// TensorRT backend: model.plan + engine.json (engines/README.md section 5). Compiled only when CMake finds
// TensorRT and the CUDA toolkit (the Dockerfile.trt image); without them `trt_runtime_version()` is empty
// and sleb-host refuses engine directories with one line.
//
// Not run in CI: a plan needs an NVIDIA GPU even to be deserialized. Written against the TensorRT 10 C++ API
// (IRuntime::deserializeCudaEngine, one IExecutionContext per optimization profile,
// setOptimizationProfileAsync, setInputShape, setTensorAddress, enqueueV3). Both KV-cache contracts: an engine
// built from a `--kv-cache static --max-cache-len N` export binds one device buffer per K/V tensor as both its
// past input and its present output (KVCacheUpdate updates it in place); that path has not been compiled against
// TensorRT's own headers nor run (see trt_backend.cpp).
#pragma once

#include <memory>
#include <string>

#include "sleb_host/generate.hpp"
#include "sleb_host/manifests.hpp"

namespace sleb {

// "major.minor.patch" of the linked TensorRT library; "" when this host was built without TensorRT.
std::string trt_runtime_version();

// Checks the plan against the linked TensorRT (check_plan_runtime) and loads it; throws without TensorRT.
std::unique_ptr<Backend> make_trt_backend(const EngineInfo& info);

}  // namespace sleb
