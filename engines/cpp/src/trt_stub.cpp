// Built when TensorRT is not found: engine directories are refused with one line (check_plan_runtime).
#include "sleb_host/errors.hpp"
#include "sleb_host/trt_backend.hpp"

namespace sleb {

std::string trt_runtime_version() { return ""; }

std::unique_ptr<Backend> make_trt_backend(const EngineInfo& info) {
  check_plan_runtime(info, trt_runtime_version());  // throws: a tensorrt_rtx plan, or no TensorRT here
  throw MissingDependencyError("this sleb-host was built without TensorRT");
}

}  // namespace sleb
