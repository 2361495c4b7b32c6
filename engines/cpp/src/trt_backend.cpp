// The TensorRT backend (see trt_backend.hpp). Compiled only where TensorRT is installed; not run in CI.
//
// The static KV-cache path (reserve_static / forward_static, engines/README.md section 5c) has never been
// compiled nor run: no TensorRT headers and no NVIDIA GPU where it was written. It follows TensorRT's KV-cache
// documentation (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/transformers-kv-cache.html and the
// KVCacheUpdate operator page): the cache must be a network input with a static sequence length, the layer's
// output (our present.{i}.*) must share the input's device memory, bound with IExecutionContext::setTensorAddress
// to the same address for both ("If different addresses are assigned, TensorRT reports an API error"), and
// writeIndices[i] + sequence_length <= max_cache_len (checked here before enqueueV3, check_static_step).
#include "sleb_host/trt_backend.hpp"

#include <NvInferRuntime.h>  // the runtime API only (no builder): what a deploy-only host needs
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "sleb_host/errors.hpp"

namespace sleb {

namespace {

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw ArtifactError(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "sleb-host: tensorrt: " << msg << "\n";
  }
};

// A device allocation freed with the backend. Move-only: a copy would free the allocation twice.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr(other.ptr), bytes(other.bytes) {
    other.ptr = nullptr;
    other.bytes = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  void resize(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

nvinfer1::Dims dims(std::initializer_list<int64_t> values) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<int32_t>(values.size());
  int k = 0;
  for (int64_t v : values) d.d[k++] = v;
  return d;
}

class TrtBackend final : public Backend {
 public:
  explicit TrtBackend(const EngineInfo& info) : info_(info) {
    std::ifstream in(info.plan_path, std::ios::binary);
    std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (static_cast<int64_t>(plan.size()) != info.plan_bytes)
      throw ArtifactError(info.plan_path + " has " + std::to_string(plan.size()) + " bytes, engine.json says " +
                          std::to_string(info.plan_bytes) + ": rebuild the engine");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_ ? runtime_->deserializeCudaEngine(plan.data(), plan.size()) : nullptr);
    if (!engine_) throw ArtifactError(info.plan_path + ": TensorRT could not deserialize it (another GPU model or TensorRT build?)");
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    // One execution context per profile, weights shared: 0 = prefill (the default), 1 = decode.
    for (auto& ctx : ctx_) {
      ctx.reset(engine_->createExecutionContext());
      if (!ctx) throw ArtifactError(info.plan_path + ": TensorRT could not create an execution context");
    }
    if (!ctx_[1]->setOptimizationProfileAsync(1, stream_))
      throw ArtifactError(info.plan_path + ": the plan has no decode profile (index 1)");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  ~TrtBackend() override {
    for (auto& ctx : ctx_) ctx.reset();
    engine_.reset();
    runtime_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  const GraphInfo& graph() const override { return info_.graph; }
  const Limits& limits() const override { return info_.limits; }

  void reserve(int64_t batch, int64_t max_total) override {
    const GraphInfo& g = info_.graph;
    if (g.is_static()) throw std::logic_error("reserve() on a static-cache engine: use reserve_static()");
    const size_t kv_bytes = static_cast<size_t>(batch * g.num_kv_heads * max_total * g.head_dim) * g.element_size();
    for (auto& set : kv_) {
      set.resize(2 * g.num_layers);
      for (auto& buf : set) buf.resize(kv_bytes);
    }
    const size_t tokens = static_cast<size_t>(batch * max_total) * sizeof(int64_t);
    ids_.resize(tokens);
    mask_.resize(tokens);
    pos_.resize(tokens);
    const int64_t lseq = g.last_logits_only ? 1 : max_total;
    logits_.resize(static_cast<size_t>(batch * lseq * g.vocab_size) * g.element_size());
    cur_ = 0;
  }

  void forward(const int64_t* ids, const int64_t* mask, const int64_t* pos, int64_t batch, int64_t seq, int64_t past,
               float* last_logits) override {
    const GraphInfo& g = info_.graph;
    if (g.is_static()) throw std::logic_error("forward() on a static-cache engine: use forward_static()");
    nvinfer1::IExecutionContext* ctx = ctx_[past == 0 ? 0 : 1].get();
    // int64 bindings for the three token inputs (engine.json's int64_inputs), never int32.
    cuda_check(cudaMemcpyAsync(ids_.ptr, ids, batch * seq * sizeof(int64_t), cudaMemcpyHostToDevice, stream_), "copy input_ids");
    cuda_check(cudaMemcpyAsync(mask_.ptr, mask, batch * (past + seq) * sizeof(int64_t), cudaMemcpyHostToDevice, stream_), "copy attention_mask");
    cuda_check(cudaMemcpyAsync(pos_.ptr, pos, batch * seq * sizeof(int64_t), cudaMemcpyHostToDevice, stream_), "copy position_ids");
    bool ok = ctx->setInputShape("input_ids", dims({batch, seq})) &&
              ctx->setInputShape("attention_mask", dims({batch, past + seq})) &&
              ctx->setInputShape("position_ids", dims({batch, seq})) &&
              ctx->setTensorAddress("input_ids", ids_.ptr) && ctx->setTensorAddress("attention_mask", mask_.ptr) &&
              ctx->setTensorAddress("position_ids", pos_.ptr) && ctx->setTensorAddress("logits", logits_.ptr);
    const auto past_names = g.input_names();
    const auto present_names = g.output_names();
    for (size_t k = 0; k < kv_[cur_].size(); ++k) {
      // A zero-length past (prefill) still gets a valid address: the current set's buffer.
      const char* pin = past_names[3 + k].c_str();
      ok = ok && ctx->setInputShape(pin, dims({batch, g.num_kv_heads, past, g.head_dim})) &&
           ctx->setTensorAddress(pin, kv_[cur_][k].ptr) &&
           ctx->setTensorAddress(present_names[1 + k].c_str(), kv_[1 - cur_][k].ptr);
    }
    if (!ok) throw UserInputError("TensorRT rejected the shapes of this step (outside the engine's profiles)");
    if (!ctx->enqueueV3(stream_)) throw ArtifactError(info_.plan_path + ": enqueueV3 failed");
    cur_ = 1 - cur_;
    last_positions(ctx, batch, last_logits);
  }

  // Static contract (section 5c), UNRUN (see the top of this file): one zeroed device buffer
  // [batch, H, cache_len, D] per K/V tensor; each step binds it as both past_key_values.{i}.* and present.{i}.*
  // (one address: KVCacheUpdate writes this step's rows in place). The engine fixes cache_len (TensorRT refuses
  // a symbolic one at build time); cache_length() has checked the request against it.
  void reserve_static(int64_t batch, int64_t cache_len) override {
    const GraphInfo& g = info_.graph;
    if (!g.is_static()) throw std::logic_error("reserve_static() on a concatenating engine: use reserve()");
    const size_t kv_bytes = static_cast<size_t>(batch * g.num_kv_heads * cache_len * g.head_dim) * g.element_size();
    kv_[0].resize(2 * g.num_layers);
    for (auto& buf : kv_[0]) {
      buf.resize(kv_bytes);
      // Zeros, as OrtGenerator's: masked slots of an earlier request weigh 0, but a stale NaN times 0 is NaN.
      cuda_check(cudaMemsetAsync(buf.ptr, 0, kv_bytes, stream_), "cudaMemsetAsync");
    }
    // input_ids / position_ids hold at most the prompt (<= the prefill profile's max, <= cache_len).
    const size_t tokens = static_cast<size_t>(batch * cache_len) * sizeof(int64_t);
    ids_.resize(tokens);
    mask_.resize(tokens);
    pos_.resize(tokens);
    write_.resize(static_cast<size_t>(batch) * sizeof(int64_t));
    const int64_t lseq = g.last_logits_only ? 1 : cache_len;
    logits_.resize(static_cast<size_t>(batch * lseq * g.vocab_size) * g.element_size());
    static_batch_ = batch;
    cache_len_ = cache_len;
  }

  void forward_static(const int64_t* ids, const int64_t* mask, const int64_t* pos, const int64_t* write, int64_t batch,
                      int64_t seq, float* last_logits) override {
    const GraphInfo& g = info_.graph;
    if (!cache_len_) throw std::logic_error("forward_static() before reserve_static()");
    check_static_step(static_batch_, cache_len_, batch, seq, write);
    // Profile 0 (prefill) takes sequence 1 .. max_input_len, profile 1 (decode) sequence 1; both keep the
    // buffers and the mask at cache_len slots (sleb_deploy/engines/profiles.py, optimization_profiles).
    nvinfer1::IExecutionContext* ctx = ctx_[seq == 1 ? 1 : 0].get();
    const auto i64 = sizeof(int64_t);
    cuda_check(cudaMemcpyAsync(ids_.ptr, ids, batch * seq * i64, cudaMemcpyHostToDevice, stream_), "copy input_ids");
    cuda_check(cudaMemcpyAsync(mask_.ptr, mask, batch * cache_len_ * i64, cudaMemcpyHostToDevice, stream_),
               "copy attention_mask");
    cuda_check(cudaMemcpyAsync(pos_.ptr, pos, batch * seq * i64, cudaMemcpyHostToDevice, stream_), "copy position_ids");
    cuda_check(cudaMemcpyAsync(write_.ptr, write, batch * i64, cudaMemcpyHostToDevice, stream_), "copy write_indices");
    bool ok = ctx->setInputShape("input_ids", dims({batch, seq})) &&
              ctx->setInputShape("attention_mask", dims({batch, cache_len_})) &&
              ctx->setInputShape("position_ids", dims({batch, seq})) &&
              ctx->setInputShape("write_indices", dims({batch})) && ctx->setTensorAddress("input_ids", ids_.ptr) &&
              ctx->setTensorAddress("attention_mask", mask_.ptr) && ctx->setTensorAddress("position_ids", pos_.ptr) &&
              ctx->setTensorAddress("write_indices", write_.ptr) && ctx->setTensorAddress("logits", logits_.ptr);
    const auto past_names = g.input_names();  // input_ids, attention_mask, position_ids, write_indices, K/V...
    const auto present_names = g.output_names();
    for (size_t k = 0; k < kv_[0].size(); ++k) {
      const char* past = past_names[4 + k].c_str();
      ok = ok && ctx->setInputShape(past, dims({batch, g.num_kv_heads, cache_len_, g.head_dim})) &&
           ctx->setTensorAddress(past, kv_[0][k].ptr) && ctx->setTensorAddress(present_names[1 + k].c_str(), kv_[0][k].ptr);
    }
    if (!ok) throw UserInputError("TensorRT rejected the shapes of this step (outside the engine's profiles)");
    if (!ctx->enqueueV3(stream_)) throw ArtifactError(info_.plan_path + ": enqueueV3 failed");
    last_positions(ctx, batch, last_logits);
  }

 private:
  // logits is [B, S, V] (or [B, 1, V]): copy each row's last position (a strided 2-D copy), then to float.
  void last_positions(nvinfer1::IExecutionContext* ctx, int64_t batch, float* last_logits) {
    const GraphInfo& g = info_.graph;
    const nvinfer1::Dims ls = ctx->getTensorShape("logits");
    const int64_t lseq = ls.nbDims == 3 ? ls.d[1] : 1;
    const size_t es = g.element_size();
    const size_t row = static_cast<size_t>(g.vocab_size) * es;
    host_.resize(static_cast<size_t>(batch) * row);
    cuda_check(cudaMemcpy2DAsync(host_.data(), row, static_cast<char*>(logits_.ptr) + (lseq - 1) * row, lseq * row, row,
                                 static_cast<size_t>(batch), cudaMemcpyDeviceToHost, stream_),
               "copy logits");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    logits_to_float(host_.data(), g.dtype, static_cast<size_t>(batch * g.vocab_size), last_logits);
  }

  EngineInfo info_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> ctx_[2];
  cudaStream_t stream_ = nullptr;
  std::vector<DeviceBuffer> kv_[2];  // concat: the ping-pong sets; static: kv_[0], aliased past/present
  DeviceBuffer ids_, mask_, pos_, write_, logits_;
  std::vector<uint8_t> host_;
  int cur_ = 0;
  int64_t static_batch_ = 0, cache_len_ = 0;
};

}  // namespace

std::string trt_runtime_version() {
  // TensorRT 10 encodes the library version as major * 10000 + minor * 100 + patch.
  const int32_t v = getInferLibVersion();
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." + std::to_string(v % 100);
}

std::unique_ptr<Backend> make_trt_backend(const EngineInfo& info) {
  check_plan_runtime(info, trt_runtime_version());
  return std::make_unique<TrtBackend>(info);
}

}  // namespace sleb
