// ONNX Runtime backend: model.onnx + export.json, through the C++ API, either KV-cache contract (the static one
// through Ort::IoBinding, each buffer bound as its layer's past input and present output). CPU by default; the
// CUDA execution provider when asked for and the library has it (the onnxruntime-gpu wheel's library). KV
// buffers are host memory here, so on CUDA every step copies the cache across; a CUDA server would bind device
// buffers instead (not done: no GPU in CI to test it on).
#pragma once

#include <memory>
#include <string>

#include "sleb_host/generate.hpp"
#include "sleb_host/manifests.hpp"

namespace sleb {

struct OrtOptions {
  int intra_op_threads = 0;  // 0: ONNX Runtime's default (one per physical core)
  bool cuda = false;
};

std::unique_ptr<Backend> make_ort_backend(const ExportInfo& info, const OrtOptions& opts);

std::string ort_version();  // the loaded library's version, e.g. 1.32.0

}  // namespace sleb
