#include "sleb_host/ort_backend.hpp"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstring>

#include "sleb_host/errors.hpp"

namespace sleb {

namespace {

ONNXTensorElementDataType ort_type(const std::string& dtype) {
  if (dtype == "fp16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  if (dtype == "bf16") return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

class OrtBackend final : public Backend {
 public:
  OrtBackend(const ExportInfo& info, const OrtOptions& opts)
      : info_(info), env_(ORT_LOGGING_LEVEL_FATAL, "sleb-host"),  // failures surface as exceptions: one line each
        mem_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(opts.intra_op_threads);
    if (opts.cuda) {
      auto providers = Ort::GetAvailableProviders();
      if (std::find(providers.begin(), providers.end(), "CUDAExecutionProvider") == providers.end())
        throw MissingDependencyError("this ONNX Runtime library has no CUDA execution provider: link the onnxruntime-gpu wheel's library, or drop --cuda");
      OrtCUDAProviderOptions cuda{};
      so.AppendExecutionProvider_CUDA(cuda);
    }
    try {
      session_ = std::make_unique<Ort::Session>(env_, info.onnx_path.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw ArtifactError(info.onnx_path + ": ONNX Runtime cannot load it: " + first_line(e.what()));
    }
    check_io();
    for (const auto& n : info_.graph.input_names()) in_names_.push_back(n);
    for (const auto& n : info_.graph.output_names()) out_names_.push_back(n);
    for (const auto& n : in_names_) in_ptrs_.push_back(n.c_str());
    for (const auto& n : out_names_) out_ptrs_.push_back(n.c_str());
  }

  const GraphInfo& graph() const override { return info_.graph; }
  const Limits& limits() const override { return info_.limits; }

  void reserve(int64_t batch, int64_t max_total) override {
    const GraphInfo& g = info_.graph;
    const size_t bytes = static_cast<size_t>(batch * g.num_kv_heads * std::max<int64_t>(max_total, 1) * g.head_dim) *
                         g.element_size();
    for (auto& set : kv_) {
      set.resize(2 * g.num_layers);
      for (auto& buf : set) buf.resize(bytes);
    }
    cur_ = 0;
  }

  void forward(const int64_t* ids, const int64_t* mask, const int64_t* pos, int64_t batch, int64_t seq, int64_t past,
               float* last_logits) override {
    const GraphInfo& g = info_.graph;
    const auto type = ort_type(g.dtype);
    const int64_t tok_shape[2] = {batch, seq};
    const int64_t mask_shape[2] = {batch, past + seq};
    const int64_t past_shape[4] = {batch, g.num_kv_heads, past, g.head_dim};
    const int64_t present_shape[4] = {batch, g.num_kv_heads, past + seq, g.head_dim};
    const int64_t lseq = g.last_logits_only ? 1 : seq;
    const int64_t logits_shape[3] = {batch, lseq, g.vocab_size};
    const size_t es = g.element_size();
    logits_.resize(static_cast<size_t>(batch * lseq * g.vocab_size) * es);

    std::vector<Ort::Value> in, out;
    in.reserve(in_ptrs_.size());
    out.reserve(out_ptrs_.size());
    // The int64 inputs are read, never written: ONNX Runtime's API takes a non-const pointer regardless.
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem_, const_cast<int64_t*>(ids), batch * seq, tok_shape, 2));
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem_, const_cast<int64_t*>(mask), batch * (past + seq), mask_shape, 2));
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem_, const_cast<int64_t*>(pos), batch * seq, tok_shape, 2));
    const size_t past_bytes = static_cast<size_t>(batch * g.num_kv_heads * past * g.head_dim) * es;
    const size_t present_bytes = static_cast<size_t>(batch * g.num_kv_heads * (past + seq) * g.head_dim) * es;
    out.push_back(Ort::Value::CreateTensor(mem_, logits_.data(), logits_.size(), logits_shape, 3, type));
    for (size_t k = 0; k < kv_[cur_].size(); ++k) {
      // Ping-pong: pasts from the current set (a zero-length past still gets a valid address), presents
      // into the other one; ONNX Runtime writes a present straight into the buffer it is given.
      in.push_back(Ort::Value::CreateTensor(mem_, kv_[cur_][k].data(), past_bytes, past_shape, 4, type));
      out.push_back(Ort::Value::CreateTensor(mem_, kv_[1 - cur_][k].data(), present_bytes, present_shape, 4, type));
    }
    try {
      session_->Run(run_options_, in_ptrs_.data(), in.data(), in.size(), out_ptrs_.data(), out.data(), out.size());
    } catch (const Ort::Exception& e) {
      throw ArtifactError(info_.onnx_path + ": ONNX Runtime failed to run a step: " + first_line(e.what()));
    }
    cur_ = 1 - cur_;
    const size_t row = static_cast<size_t>(g.vocab_size);
    for (int64_t b = 0; b < batch; ++b)
      logits_to_float(logits_.data() + (static_cast<size_t>(b * lseq + lseq - 1) * row) * es, g.dtype, row,
                      last_logits + b * row);
  }

 private:
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  // export.json and model.onnx must agree: the same input names and the same KV dtype.
  void check_io() {
    Ort::AllocatorWithDefaultOptions alloc;
    std::vector<std::string> names;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) names.emplace_back(session_->GetInputNameAllocated(i, alloc).get());
    auto want = info_.graph.input_names();
    std::vector<std::string> a = names, b = want;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    if (a != b)
      throw ArtifactError(info_.onnx_path + ": its inputs are not the " + std::to_string(want.size()) +
                          " that export.json describes (got " + std::to_string(names.size()) + "); re-export");
    const auto idx = static_cast<size_t>(std::find(names.begin(), names.end(), "past_key_values.0.key") - names.begin());
    const auto type = session_->GetInputTypeInfo(idx).GetTensorTypeAndShapeInfo().GetElementType();
    if (type != ort_type(info_.graph.dtype))
      throw ArtifactError(info_.onnx_path + ": its KV dtype differs from export.json's graph.dtype " + info_.graph.dtype);
  }

  ExportInfo info_;
  Ort::Env env_;
  Ort::MemoryInfo mem_;
  Ort::RunOptions run_options_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> in_names_, out_names_;
  std::vector<const char*> in_ptrs_, out_ptrs_;
  std::vector<std::vector<uint8_t>> kv_[2];
  std::vector<uint8_t> logits_;
  int cur_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const ExportInfo& info, const OrtOptions& opts) {
  return std::make_unique<OrtBackend>(info, opts);
}

std::string ort_version() { return Ort::GetVersionString(); }

}  // namespace sleb
