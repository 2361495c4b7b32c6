// sleb-host: greedy generation from token ids with a sleb-deploy export (ONNX Runtime) or engine (TensorRT).
//
//   sleb-host DIR [--prompts FILE|-] [--max-new-tokens N] [--eos ID] [--pad ID] [--max-cache-len N] [--threads N]
//             [--cuda] [--json]
//
// DIR holds export.json (+ model.onnx) or engine.json (+ model.plan), of either KV-cache contract (concat or
// static, read from the manifest; --max-cache-len sizes a static graph's buffers when the graph leaves their
// length symbolic, default prompt + max new tokens). Prompts: one per line, token ids
// separated by spaces, or a JSON list of lists; stdin by default. Output: one line of new token ids per
// prompt (or one JSON object with --json). A timing line per phase goes to stderr:
//   sleb-host: timing backend=onnxruntime batch=2 phase=load ms=...
//   sleb-host: timing backend=onnxruntime batch=2 phase=prefill prompt_len=7 ms=...
//   sleb-host: timing backend=onnxruntime batch=2 phase=decode steps=15 ms_per_token=...
// Errors: one line on stderr, `sleb-host: error: ...`, and the exit code of sleb-deploy's error kind
// (2 bad input, 3 bad artifact, 4 missing backend).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>

#include "sleb_host/errors.hpp"
#include "sleb_host/generate.hpp"
#include "sleb_host/json.hpp"
#include "sleb_host/manifests.hpp"
#include "sleb_host/ort_backend.hpp"
#include "sleb_host/prompts.hpp"
#include "sleb_host/trt_backend.hpp"

namespace {

const char* kUsage =
    "usage: sleb-host DIR [--prompts FILE|-] [--max-new-tokens N] [--eos ID] [--pad ID] [--max-cache-len N] "
    "[--threads N] [--cuda] [--json]";

struct Args {
  std::string dir;
  std::string prompts = "-";
  sleb::GenerateOptions gen;
  sleb::OrtOptions ort;
  bool json = false;
};

int64_t integer(const std::string& flag, const std::string& value) {
  char* end = nullptr;
  const long long v = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0') throw sleb::UserInputError(flag + " expects an integer, not '" + value + "'");
  return v;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw sleb::UserInputError(arg + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (arg == "--prompts") a.prompts = next();
    else if (arg == "--max-new-tokens") a.gen.max_new_tokens = integer(arg, next());
    else if (arg == "--eos") a.gen.eos_token_id = integer(arg, next());
    else if (arg == "--pad") a.gen.pad_token_id = integer(arg, next());
    else if (arg == "--max-cache-len") a.gen.max_cache_len = integer(arg, next());
    else if (arg == "--threads") a.ort.intra_op_threads = static_cast<int>(integer(arg, next()));
    else if (arg == "--cuda") a.ort.cuda = true;
    else if (arg == "--json") a.json = true;
    else if (!arg.empty() && arg[0] == '-') throw sleb::UserInputError("unknown option " + arg + "; " + kUsage);
    else if (a.dir.empty()) a.dir = arg;
    else throw sleb::UserInputError(std::string("one directory only; ") + kUsage);
  }
  if (a.dir.empty()) throw sleb::UserInputError(std::string("no directory given; ") + kUsage);
  return a;
}

std::string read_prompts(const std::string& where) {
  if (where == "-") {
    std::ostringstream buf;
    buf << std::cin.rdbuf();
    return buf.str();
  }
  try {
    return sleb::read_text_file(where);
  } catch (const std::runtime_error&) {
    throw sleb::UserInputError("cannot read prompts from " + where);
  }
}

int run(int argc, char** argv) {
  using clock = std::chrono::steady_clock;
  if (argc == 2 && std::string(argv[1]) == "--version") {
    const std::string trt = sleb::trt_runtime_version();
    std::cout << "sleb-host onnxruntime " << sleb::ort_version() << " tensorrt " << (trt.empty() ? "none" : trt) << "\n";
    return 0;
  }
  const Args args = parse_args(argc, argv);
  const std::string kind = sleb::artifact_kind(args.dir);
  const auto prompts = sleb::parse_prompts(read_prompts(args.prompts));
  const auto t0 = clock::now();
  std::unique_ptr<sleb::Backend> backend;
  std::string name;
  if (kind == "engine") {
    const sleb::EngineInfo info = sleb::read_engine(args.dir);
    sleb::check_request(info.graph, info.limits, prompts, args.gen);  // the engine's limits first: they hold on any runtime
    backend = sleb::make_trt_backend(info);
    name = "tensorrt";
  } else {
    const sleb::ExportInfo info = sleb::read_export(args.dir);
    sleb::check_request(info.graph, info.limits, prompts, args.gen);  // before the (slow) session load
    backend = sleb::make_ort_backend(info, args.ort);
    name = args.ort.cuda ? "onnxruntime-cuda" : "onnxruntime";
  }
  const double load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  const sleb::GenerateResult r = sleb::generate(*backend, prompts, args.gen);

  std::ostringstream out;
  if (args.json) out << "{\"tokens\": [";
  for (size_t b = 0; b < r.new_tokens.size(); ++b) {
    if (args.json) out << (b ? ", [" : "[");
    for (size_t t = 0; t < r.new_tokens[b].size(); ++t) out << (t ? (args.json ? ", " : " ") : "") << r.new_tokens[b][t];
    out << (args.json ? "]" : "\n");
  }
  if (args.json)
    out << "], \"backend\": \"" << name << "\", \"kv_cache\": \"" << backend->graph().kv_cache
        << "\", \"cache_len\": " << r.cache_len << ", \"batch\": " << prompts.size() << ", \"prompt_len\": " << r.prompt_len
        << ", \"load_ms\": " << load_ms << ", \"prefill_ms\": " << r.timing.prefill_ms
        << ", \"decode_steps\": " << r.timing.decode_steps << ", \"decode_ms_per_token\": " << r.timing.decode_ms_per_token()
        << "}\n";
  std::cout << out.str();
  const std::string head = "sleb-host: timing backend=" + name + " batch=" + std::to_string(prompts.size());
  std::cerr << head << " phase=load ms=" << load_ms << "\n"
            << head << " phase=prefill prompt_len=" << r.prompt_len << " ms=" << r.timing.prefill_ms << "\n"
            << head << " phase=decode steps=" << r.timing.decode_steps
            << " ms_per_token=" << r.timing.decode_ms_per_token() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const sleb::HostError& e) {
    std::cerr << "sleb-host: error: " << e.what() << "\n";
    return e.exit_code;
  }
}
