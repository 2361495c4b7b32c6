// The TensorRT backend (see trt_backend.hpp). Compiled only where TensorRT is installed; not run in CI.
#include "sleb_host/trt_backend.hpp"

#include <NvInferRuntime.h>  // the runtime API only (no builder): what a deploy-only host needs
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
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

// A device allocation freed with the backend.
struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
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
    // logits is [B, S, V] (or [B, 1, V]): copy each row's last position, a strided 2-D copy.
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

 private:
  EngineInfo info_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> ctx_[2];
  cudaStream_t stream_ = nullptr;
  std::vector<DeviceBuffer> kv_[2];
  DeviceBuffer ids_, mask_, pos_, logits_;
  std::vector<uint8_t> host_;
  int cur_ = 0;
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
