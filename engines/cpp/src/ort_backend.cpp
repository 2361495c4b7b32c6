#include "sleb_host/ort_backend.hpp"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

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
    const size_t first_past = info_.graph.is_static() ? 4 : 3;
    past_names_.assign(in_names_.begin() + first_past, in_names_.end());
    present_names_.assign(out_names_.begin() + 1, out_names_.end());
  }

  const GraphInfo& graph() const override { return info_.graph; }
  const Limits& limits() const override { return info_.limits; }

  void reserve(int64_t batch, int64_t max_total) override {
    const GraphInfo& g = info_.graph;
    if (g.is_static()) throw std::logic_error("reserve() on a static-cache graph: use reserve_static()");
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
    if (g.is_static()) throw std::logic_error("forward() on a static-cache graph: use forward_static()");
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
    last_positions(batch, lseq, last_logits);
  }

  // Static contract: one zeroed buffer per K/V tensor, bound (Ort::IoBinding) as its past input and as the
  // present output of the same layer, so TensorScatter updates it in place (bound to two buffers, ONNX Runtime
  // would copy the whole cache every step). Zeros, as OrtGenerator's: an earlier request's rows are masked,
  // but a stale NaN times a zero weight is still NaN.
  void reserve_static(int64_t batch, int64_t cache_len) override {
    const GraphInfo& g = info_.graph;
    if (!g.is_static()) throw std::logic_error("reserve_static() on a concatenating graph: use reserve()");
    binding_.reset();  // it holds the previous request's values, whose memory is reallocated below
    kv_values_.clear();
    const int64_t shape[4] = {batch, g.num_kv_heads, cache_len, g.head_dim};
    const size_t bytes = static_cast<size_t>(batch * g.num_kv_heads * cache_len * g.head_dim) * g.element_size();
    kv_[0].resize(2 * g.num_layers);
    for (auto& buf : kv_[0]) {
      buf.assign(bytes, 0);
      kv_values_.push_back(Ort::Value::CreateTensor(mem_, buf.data(), bytes, shape, 4, ort_type(g.dtype)));
    }
    binding_ = std::make_unique<Ort::IoBinding>(*session_);
    static_batch_ = batch;
    cache_len_ = cache_len;
  }

  void forward_static(const int64_t* ids, const int64_t* mask, const int64_t* pos, const int64_t* write, int64_t batch,
                      int64_t seq, float* last_logits) override {
    const GraphInfo& g = info_.graph;
    if (!binding_) throw std::logic_error("forward_static() before reserve_static()");
    check_static_step(static_batch_, cache_len_, batch, seq, write);
    const int64_t tok_shape[2] = {batch, seq};
    const int64_t mask_shape[2] = {batch, cache_len_};
    const int64_t write_shape[1] = {batch};
    const int64_t lseq = g.last_logits_only ? 1 : seq;
    const int64_t logits_shape[3] = {batch, lseq, g.vocab_size};
    logits_.resize(static_cast<size_t>(batch * lseq * g.vocab_size) * g.element_size());
    // The int64 inputs are read, never written (the API takes non-const pointers regardless). Rebinding a name
    // replaces its value. The K/V values are bound again every step too: a CPU value bound to an input the CUDA
    // EP reads is copied to the device when bound, so binding it once would feed a stale copy from step 2 on
    // (on the CPU EP binding copies nothing).
    auto i64 = [&](const int64_t* data, int64_t count, const int64_t* shape, size_t rank) {
      return Ort::Value::CreateTensor<int64_t>(mem_, const_cast<int64_t*>(data), count, shape, rank);
    };
    binding_->BindInput("input_ids", i64(ids, batch * seq, tok_shape, 2));
    binding_->BindInput("attention_mask", i64(mask, batch * cache_len_, mask_shape, 2));
    binding_->BindInput("position_ids", i64(pos, batch * seq, tok_shape, 2));
    binding_->BindInput("write_indices", i64(write, batch, write_shape, 1));
    binding_->BindOutput("logits", Ort::Value::CreateTensor(mem_, logits_.data(), logits_.size(), logits_shape, 3,
                                                            ort_type(g.dtype)));
    for (size_t k = 0; k < kv_values_.size(); ++k) {
      binding_->BindInput(past_names_[k].c_str(), kv_values_[k]);
      binding_->BindOutput(present_names_[k].c_str(), kv_values_[k]);
    }
    try {
      session_->Run(run_options_, *binding_);
    } catch (const Ort::Exception& e) {
      throw ArtifactError(info_.onnx_path + ": ONNX Runtime failed to run a step: " + first_line(e.what()));
    }
    last_positions(batch, lseq, last_logits);
  }

 private:
  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  // Each row's last position of logits_ ([batch, lseq, V] in the graph's dtype) as float [batch, V].
  void last_positions(int64_t batch, int64_t lseq, float* last_logits) const {
    const GraphInfo& g = info_.graph;
    const size_t row = static_cast<size_t>(g.vocab_size);
    for (int64_t b = 0; b < batch; ++b)
      logits_to_float(logits_.data() + (static_cast<size_t>(b * lseq + lseq - 1) * row) * g.element_size(), g.dtype,
                      row, last_logits + b * row);
  }

  // export.json and model.onnx must agree: the KV-cache contract (the graph speaks the static one when it has a
  // write_indices input; its buffer length is fixed when the past's dimension 2 is), the input names and the
  // KV dtype.
  void check_io() {
    Ort::AllocatorWithDefaultOptions alloc;
    std::vector<std::string> names;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) names.emplace_back(session_->GetInputNameAllocated(i, alloc).get());
    const bool graph_static = std::find(names.begin(), names.end(), "write_indices") != names.end();
    if (graph_static != info_.graph.is_static())
      throw ArtifactError(info_.onnx_path + ": the graph speaks the " + (graph_static ? "static" : "concat") +
                          " KV-cache contract, export.json's graph.kv_cache says " + info_.graph.kv_cache + "; re-export");
    auto want = info_.graph.input_names();
    std::vector<std::string> a = names, b = want;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    if (a != b)
      throw ArtifactError(info_.onnx_path + ": its inputs are not the " + std::to_string(want.size()) +
                          " that export.json describes (got " + std::to_string(names.size()) + "); re-export");
    const auto idx = static_cast<size_t>(std::find(names.begin(), names.end(), "past_key_values.0.key") - names.begin());
    const Ort::TypeInfo info = session_->GetInputTypeInfo(idx);  // owns what the shape view reads
    const auto past = info.GetTensorTypeAndShapeInfo();
    if (past.GetElementType() != ort_type(info_.graph.dtype))
      throw ArtifactError(info_.onnx_path + ": its KV dtype differs from export.json's graph.dtype " + info_.graph.dtype);
    if (graph_static) {
      const auto shape = past.GetShape();  // [batch, heads, max_cache_len, head_dim]; -1 where symbolic
      const int64_t fixed = shape.size() == 4 && shape[2] > 0 ? shape[2] : 0;
      if (fixed != info_.graph.max_cache_len)
        throw ArtifactError(info_.onnx_path + ": its KV buffers have " + (fixed ? std::to_string(fixed) : "a symbolic number of") +
                            " slots, export.json's graph.max_cache_len says " +
                            (info_.graph.max_cache_len ? std::to_string(info_.graph.max_cache_len) : "null") + "; re-export");
    }
  }

  ExportInfo info_;
  Ort::Env env_;
  Ort::MemoryInfo mem_;
  Ort::RunOptions run_options_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> in_names_, out_names_;
  std::vector<const char*> in_ptrs_, out_ptrs_;
  std::vector<std::string> past_names_, present_names_;  // the K/V names alone, in the graph's order
  std::vector<std::vector<uint8_t>> kv_[2];                // concat: the ping-pong sets; static: kv_[0]
  std::vector<uint8_t> logits_;
  int cur_ = 0;
  // Static contract: the buffers' values (over kv_[0]) and the binding that aliases them.
  std::vector<Ort::Value> kv_values_;
  std::unique_ptr<Ort::IoBinding> binding_;
  int64_t static_batch_ = 0, cache_len_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const ExportInfo& info, const OrtOptions& opts) {
  return std::make_unique<OrtBackend>(info, opts);
}

std::string ort_version() { return Ort::GetVersionString(); }

}  // namespace sleb
