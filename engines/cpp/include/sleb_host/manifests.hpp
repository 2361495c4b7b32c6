// What the host reads from an artifact directory: export.json (an ONNX export) or engine.json (a TensorRT
// plan), the fields of engines/README.md it needs, checked. Python's readers are
// sleb_deploy/export/manifest.py (ExportManifest) and sleb_deploy/engines/build.py (EngineManifest).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sleb {

// The graph's shape and KV-cache contract (engines/README.md sections 3 and 5c), whichever backend runs it.
struct GraphInfo {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  std::string dtype;  // fp32 | fp16 | bf16 (contract.py's keys)
  bool last_logits_only = false;
  std::string kv_cache = "concat";  // concat | static (contract.KV_CACHE_CONTRACTS)
  int64_t max_cache_len = 0;        // static: the buffer length fixed in the graph; 0 = symbolic (any length)

  bool is_static() const { return kv_cache == "static"; }
  // input_ids, attention_mask, position_ids, write_indices (static only), past_key_values.*
  std::vector<std::string> input_names() const;
  std::vector<std::string> output_names() const;  // logits, present.*
  size_t element_size() const;                    // bytes of one KV / logits element
};

// What a request must fit; 0 = no limit of that kind.
struct Limits {
  int64_t max_batch = 0;
  int64_t max_input_len = 0;    // prompt length (the prefill profile's sequence_length)
  int64_t max_context_len = 0;  // prompt + generated - 1 (the attention mask of the last forward; concat only)
  int64_t vocab_size = 0;       // every token id must be below it
};

struct ExportInfo {
  std::string dir;
  std::string onnx_path;
  GraphInfo graph;
  Limits limits;  // max_context_len from config.json's max_position_embeddings when the export has one
};

struct EngineProfile {
  std::string name;  // prefill | decode
  int64_t min_batch = 0, max_batch = 0;
  int64_t min_seq = 0, max_seq = 0;    // input_ids' sequence_length
  int64_t min_mask = 0, max_mask = 0;  // attention_mask's length (past + sequence)
};

struct EngineInfo {
  std::string dir;
  std::string plan_path;
  int64_t plan_bytes = 0;
  std::string module;   // tensorrt | tensorrt_rtx
  std::string version;  // the builder's TensorRT version, e.g. 10.13.0.35
  GraphInfo graph;
  std::vector<EngineProfile> profiles;  // [prefill, decode]
  Limits limits;
};

// Which kind of directory `dir` is: "export", "engine"; throws ArtifactError when it is neither.
std::string artifact_kind(const std::string& dir);

ExportInfo read_export(const std::string& dir);  // throws ArtifactError (one line, naming the file)
EngineInfo read_engine(const std::string& dir);

// A plan runs only on the TensorRT (module and version) that built it. `runtime_version` is the linked
// library's "major.minor.patch", empty when this host was built without TensorRT. Throws ArtifactError /
// MissingDependencyError.
void check_plan_runtime(const EngineInfo& engine, const std::string& runtime_version);

// "10.13.0.35" and "10.13.0" name the same runtime; compares major.minor.patch.
bool same_trt_version(const std::string& plan_version, const std::string& runtime_version);

}  // namespace sleb
