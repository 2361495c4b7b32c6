// Built with -DSLEB_HOST_WITH_ORT=OFF (e.g. a TensorRT-only image without ONNX Runtime's headers).
#include "sleb_host/errors.hpp"
#include "sleb_host/ort_backend.hpp"

namespace sleb {

std::unique_ptr<Backend> make_ort_backend(const ExportInfo&, const OrtOptions&) {
  throw MissingDependencyError("this sleb-host was built without ONNX Runtime (SLEB_HOST_WITH_ORT=OFF): point it at an engine directory, or rebuild it with ONNX Runtime");
}

std::string ort_version() { return "none"; }

}  // namespace sleb
