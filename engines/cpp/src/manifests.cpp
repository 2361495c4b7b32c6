#include "sleb_host/manifests.hpp"

#include <sys/stat.h>

#include <sstream>

#include "sleb_host/errors.hpp"
#include "sleb_host/json.hpp"

namespace sleb {

namespace {

bool is_file(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_dir(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Json read_json(const std::string& path) {
  try {
    return Json::parse(read_text_file(path));
  } catch (const std::runtime_error& e) {
    throw ArtifactError(path + ": " + e.what() + "; re-run the stage that wrote it");
  }
}

// Runs `read` and turns a JSON field error into one line naming the file.
template <typename F>
auto fields_of(const std::string& path, F read) -> decltype(read()) {
  try {
    return read();
  } catch (const HostError&) {
    throw;
  } catch (const std::runtime_error& e) {
    throw ArtifactError(path + ": " + e.what() + " (written by another version of sleb-deploy?)");
  }
}

void check_schema(const Json& doc, const std::string& path, const std::string& want) {
  std::string got = doc.is_object() && doc.has("schema") && doc.at("schema").is_string()
                        ? doc.at("schema").as_string() : "(none)";
  if (got != want)
    throw ArtifactError(path + ": schema is '" + got + "', this host reads '" + want + "': re-run the stage that wrote it");
}

std::string dtype_from_trt(const std::string& trt) {
  if (trt == "FLOAT") return "fp32";
  if (trt == "HALF") return "fp16";
  if (trt == "BF16") return "bf16";
  return "";
}

}  // namespace

std::vector<std::string> GraphInfo::input_names() const {
  std::vector<std::string> names{"input_ids", "attention_mask", "position_ids"};
  if (is_static()) names.push_back("write_indices");
  for (int64_t i = 0; i < num_layers; ++i) {
    names.push_back("past_key_values." + std::to_string(i) + ".key");
    names.push_back("past_key_values." + std::to_string(i) + ".value");
  }
  return names;
}

std::vector<std::string> GraphInfo::output_names() const {
  std::vector<std::string> names{"logits"};
  for (int64_t i = 0; i < num_layers; ++i) {
    names.push_back("present." + std::to_string(i) + ".key");
    names.push_back("present." + std::to_string(i) + ".value");
  }
  return names;
}

size_t GraphInfo::element_size() const { return dtype == "fp32" ? 4 : 2; }

std::string artifact_kind(const std::string& dir) {
  if (!is_dir(dir)) throw ArtifactError(dir + " not found: point at a directory written by `sleb-deploy onnx` or `sleb-deploy build`");
  if (is_file(dir + "/engine.json")) return "engine";
  if (is_file(dir + "/export.json")) return "export";
  if (is_file(dir + "/model.onnx"))
    throw ArtifactError(dir + " has model.onnx but no export.json: export it with `sleb-deploy onnx` (the host reads the graph's shape from export.json)");
  if (is_file(dir + "/model.plan"))
    throw ArtifactError(dir + " has model.plan but no engine.json: an incomplete build; re-run `sleb-deploy build`");
  throw ArtifactError(dir + " is not a sleb-deploy export or engine directory (no export.json or engine.json)");
}

ExportInfo read_export(const std::string& dir) {
  const std::string path = dir + "/export.json";
  Json doc = read_json(path);
  check_schema(doc, path, "sleb-deploy/export@1");
  ExportInfo info = fields_of(path, [&] {
    ExportInfo out;
    out.dir = dir;
    out.onnx_path = dir + "/model.onnx";
    const Json& g = doc.at("graph");
    out.graph.kv_cache = g.has("kv_cache") ? g.at("kv_cache").as_string() : "concat";
    if (out.graph.kv_cache != "concat" && out.graph.kv_cache != "static")
      throw ArtifactError(path + ": graph.kv_cache is '" + out.graph.kv_cache + "'; this host drives the 'concat' and 'static' KV-cache contracts (re-export with a sleb-deploy of its version)");
    if (g.has("max_cache_len") && !g.at("max_cache_len").is_null()) out.graph.max_cache_len = g.at("max_cache_len").as_int();
    out.graph.num_layers = g.at("num_layers").as_int();
    out.graph.num_kv_heads = g.at("num_kv_heads").as_int();
    out.graph.head_dim = g.at("head_dim").as_int();
    out.graph.vocab_size = g.at("vocab_size").as_int();
    out.graph.dtype = g.at("dtype").as_string();
    out.graph.last_logits_only = g.at("last_logits_only").as_bool();
    return out;
  });
  const GraphInfo& g = info.graph;
  if (g.dtype != "fp32" && g.dtype != "fp16" && g.dtype != "bf16")
    throw ArtifactError(path + ": graph.dtype '" + g.dtype + "' is not one of fp32, fp16, bf16");
  if (g.num_layers < 1 || g.num_kv_heads < 1 || g.head_dim < 1 || g.vocab_size < 1 || g.max_cache_len < 0)
    throw ArtifactError(path + ": graph sizes must be positive");
  if (!is_file(info.onnx_path)) throw ArtifactError(info.onnx_path + " not found: the export is incomplete; re-export");
  info.limits.vocab_size = g.vocab_size;
  // The export stage copies the checkpoint's config.json: positions past max_position_embeddings are
  // outside what the model was trained for (and outside a rotary cache built for them).
  const std::string config = dir + "/config.json";
  if (is_file(config)) {
    Json cfg = read_json(config);
    if (cfg.has("max_position_embeddings") && cfg.at("max_position_embeddings").is_number())
      info.limits.max_context_len = cfg.at("max_position_embeddings").as_int();
  }
  return info;
}

EngineInfo read_engine(const std::string& dir) {
  const std::string path = dir + "/engine.json";
  Json doc = read_json(path);
  check_schema(doc, path, "sleb-deploy/engine@1");
  EngineInfo info = fields_of(path, [&] {
    EngineInfo out;
    out.dir = dir;
    out.module = doc.at("backend").at("module").as_string();
    out.version = doc.at("backend").at("version").as_string();
    out.plan_path = dir + "/" + doc.at("plan").as_string();
    out.plan_bytes = doc.at("plan_bytes").as_int();
    out.graph.num_layers = doc.at("num_layers").as_int();
    out.graph.num_kv_heads = doc.at("num_kv_heads").as_int();
    out.graph.head_dim = doc.at("head_dim").as_int();
    // build_options.kv_cache / max_cache_len: written since the static contract (older engines: concat).
    if (doc.has("build_options")) {
      const Json& opts = doc.at("build_options");
      if (opts.has("kv_cache")) out.graph.kv_cache = opts.at("kv_cache").as_string();
      if (opts.has("max_cache_len") && !opts.at("max_cache_len").is_null())
        out.graph.max_cache_len = opts.at("max_cache_len").as_int();
    }
    for (const Json& row : doc.at("io").as_array()) {
      const std::string& name = row.at("name").as_string();
      const auto& shape = row.at("shape").as_array();
      if (name == "logits") {
        out.graph.vocab_size = shape.back().as_int();
        out.graph.last_logits_only = shape.size() == 3 && shape[1].as_int() == 1;
      } else if (name == "past_key_values.0.key") {
        out.graph.dtype = dtype_from_trt(row.at("dtype").as_string());
      }
    }
    for (const Json& p : doc.at("profiles").as_array()) {
      EngineProfile prof;
      prof.name = p.at("name").as_string();
      const Json& ids = p.at("shapes").at("input_ids");
      const Json& mask = p.at("shapes").at("attention_mask");
      prof.min_batch = ids.at("min").as_array()[0].as_int();
      prof.max_batch = ids.at("max").as_array()[0].as_int();
      prof.min_seq = ids.at("min").as_array()[1].as_int();
      prof.max_seq = ids.at("max").as_array()[1].as_int();
      prof.min_mask = mask.at("min").as_array()[1].as_int();
      prof.max_mask = mask.at("max").as_array()[1].as_int();
      out.profiles.push_back(prof);
    }
    return out;
  });
  if (info.graph.dtype.empty() || info.graph.vocab_size < 1)
    throw ArtifactError(path + ": the io table lacks logits or past_key_values.0.key with a FLOAT/HALF/BF16 dtype");
  if (info.graph.kv_cache != "concat" && (info.graph.kv_cache != "static" || info.graph.max_cache_len < 1))
    throw ArtifactError(path + ": build_options.kv_cache '" + info.graph.kv_cache +
                        "' with max_cache_len " + std::to_string(info.graph.max_cache_len) +
                        ": expected 'concat', or 'static' with a fixed buffer length; rebuild the engine");
  if (info.profiles.size() != 2 || info.profiles[0].name != "prefill" || info.profiles[1].name != "decode")
    throw ArtifactError(path + ": expected two profiles, prefill then decode (engines/README.md section 4)");
  const EngineProfile& pre = info.profiles[0];
  const EngineProfile& dec = info.profiles[1];
  info.limits.max_batch = std::min(pre.max_batch, dec.max_batch);
  info.limits.max_input_len = pre.max_seq;
  // A static engine's mask covers the buffer in every profile: the buffer (cache_length) bounds the request.
  info.limits.max_context_len = info.graph.is_static() ? 0 : dec.max_mask;
  info.limits.vocab_size = info.graph.vocab_size;
  if (!is_file(info.plan_path)) throw ArtifactError(info.plan_path + " not found: the engine directory is incomplete; rebuild it");
  return info;
}

bool same_trt_version(const std::string& plan_version, const std::string& runtime_version) {
  auto head = [](const std::string& v) {
    std::istringstream in(v);
    std::string part, out;
    for (int k = 0; k < 3 && std::getline(in, part, '.'); ++k) out += (k ? "." : "") + part;
    return out;
  };
  return !runtime_version.empty() && head(plan_version) == head(runtime_version);
}

void check_plan_runtime(const EngineInfo& engine, const std::string& runtime_version) {
  const std::string what = engine.plan_path + " was built by " + engine.module + " " + engine.version;
  if (engine.module != "tensorrt")
    throw ArtifactError(what + "; this host runs TensorRT plans only: rebuild with `sleb-deploy build --backend tensorrt` on the serving GPU");
  if (runtime_version.empty())
    throw MissingDependencyError("this sleb-host was built without TensorRT: rebuild it where TensorRT is installed (Dockerfile.trt) to run " + engine.plan_path);
  if (!same_trt_version(engine.version, runtime_version))
    throw ArtifactError(what + ", this host links TensorRT " + runtime_version + ": a plan runs only on the TensorRT that built it; rebuild the engine with it");
}

}  // namespace sleb
