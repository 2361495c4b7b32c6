// C++-level checks of the host's pure parts (no model): the JSON reader, left padding and position ids,
// the request limits, the static KV buffer's length and bounds, the TensorRT version rule, half-precision conversion, prompt parsing. The token-for-
// token checks against the Python generator are in tests/cpp/test_cpp_host.py (they need exports).
#include <cmath>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "sleb_host/errors.hpp"
#include "sleb_host/generate.hpp"
#include "sleb_host/json.hpp"
#include "sleb_host/manifests.hpp"
#include "sleb_host/prompts.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

// `fn` must throw an exception of type E whose message contains `needle`.
template <typename E>
void check_throws(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const E& e) {
    check(std::string(e.what()).find(needle) != std::string::npos, what + " (message: " + e.what() + ")");
    return;
  } catch (const std::exception& e) {
    check(false, what + ": wrong exception type (" + e.what() + ")");
    return;
  }
  check(false, what + ": nothing thrown");
}

void json_tests() {
  using sleb::Json;
  Json j = Json::parse(R"({"a": [1, -2.5, 3e2], "s": "x\"\u00e9\ud83d\ude00\n", "t": true, "n": null, "o": {}})");
  check(j.at("a").as_array().size() == 3, "json array size");
  check(j.at("a").as_array()[1].as_number() == -2.5 && j.at("a").as_array()[2].as_int() == 300, "json numbers");
  check(j.at("s").as_string() == "x\"\xc3\xa9\xf0\x9f\x98\x80\n", "json escapes (\\u, surrogate pair)");
  check(j.at("t").as_bool() && j.at("n").is_null() && j.at("o").as_object().empty(), "json literals");
  check_throws<std::runtime_error>([] { Json::parse("{\"a\": 1,}"); }, "offset", "json trailing comma");
  check_throws<std::runtime_error>([] { Json::parse("[1, 2"); }, "invalid JSON", "json unterminated");
  check_throws<std::runtime_error>([] { Json::parse("{} x"); }, "trailing", "json trailing text");
  check_throws<std::runtime_error>([&] { j.at("missing"); }, "missing key 'missing'", "json missing key");
  check_throws<std::runtime_error>([&] { j.at("a").as_array()[1].as_int(); }, "integer", "json non-integer");
}

void padding_tests() {
  sleb::Padded p = sleb::left_pad({{5, 6, 7}, {8}}, 0);
  check(p.batch == 2 && p.len == 3, "left_pad shape");
  check(p.ids == std::vector<int64_t>({5, 6, 7, 0, 0, 8}), "left_pad ids");
  check(p.mask == std::vector<int64_t>({1, 1, 1, 0, 0, 1}), "left_pad mask");
  // cumsum(mask) - 1 clipped at 0 (contract.position_ids)
  check(sleb::position_ids(p.mask, 2, 3) == std::vector<int64_t>({0, 1, 2, 0, 0, 0}), "position ids");
  check(sleb::position_ids({0, 1, 0, 1}, 1, 4) == std::vector<int64_t>({0, 0, 0, 1}), "position ids with holes");
}

void limits_tests() {
  sleb::Limits lim;
  lim.max_batch = 2;
  lim.max_input_len = 4;
  lim.max_context_len = 8;
  lim.vocab_size = 100;
  sleb::GenerateOptions opts;
  opts.max_new_tokens = 5;
  const sleb::GraphInfo graph;  // concat
  sleb::check_request(graph, lim, {{1, 2, 3, 4}}, opts);  // 4 + 5 - 1 = 8: fits exactly
  using E = sleb::UserInputError;
  check_throws<E>([&] { sleb::check_request(graph, lim, {{1}, {2}, {3}}, opts); }, "max batch of 2", "batch limit");
  check_throws<E>([&] { sleb::check_request(graph, lim, {{1, 2, 3, 4, 5}}, opts); }, "max input length of 4", "input limit");
  opts.max_new_tokens = 6;
  check_throws<E>([&] { sleb::check_request(graph, lim, {{1, 2, 3, 4}}, opts); }, "context of 9", "context limit");
  opts.max_new_tokens = 1;
  check_throws<E>([&] { sleb::check_request(graph, lim, {{1, 100}}, opts); }, "token id 100", "vocabulary");
  check_throws<E>([&] { sleb::check_request(graph, lim, {{1}, {}}, opts); }, "prompt 1 is empty", "empty prompt");
  check_throws<E>([&] { sleb::check_request(graph, lim, {}, opts); }, "no prompt", "no prompts");
}

// The static contract's buffer (OrtGenerator._generate_static / run_static): prompt + new - 1 slots needed,
// default length prompt + new, a fixed length wins, and a step may not write past it.
void static_cache_tests() {
  sleb::GraphInfo g;
  g.num_layers = 2;
  sleb::GenerateOptions opts;
  opts.max_new_tokens = 5;
  using E = sleb::UserInputError;
  check(sleb::cache_length(g, 4, opts) == 0, "concat: no buffer");
  check(g.input_names().size() == 3 + 4 && g.input_names()[3] == "past_key_values.0.key", "concat input names");
  opts.max_cache_len = 16;
  check_throws<E>([&] { sleb::cache_length(g, 4, opts); }, "static-cache exports", "--max-cache-len on concat");
  g.kv_cache = "static";
  check(g.input_names()[3] == "write_indices" && g.input_names().size() == 4 + 4, "static input names");
  check(sleb::cache_length(g, 4, opts) == 16, "symbolic: the asked length");
  opts.max_cache_len = 8;  // 4 + 5 - 1 = 8: fits exactly
  check(sleb::cache_length(g, 4, opts) == 8, "symbolic: exactly enough");
  opts.max_cache_len = 7;
  check_throws<E>([&] { sleb::cache_length(g, 4, opts); }, "7 slots, fewer than the 8", "symbolic: too short");
  opts.max_cache_len.reset();
  check(sleb::cache_length(g, 4, opts) == 9, "symbolic default: prompt + new");
  g.max_cache_len = 8;
  check(sleb::cache_length(g, 4, opts) == 8, "fixed length");
  check_throws<E>([&] { sleb::cache_length(g, 5, opts); }, "larger --max-cache-len", "fixed: too short");
  opts.max_cache_len = 9;
  check_throws<E>([&] { sleb::cache_length(g, 4, opts); }, "8 slots (fixed at export), not 9", "fixed: other length");
  sleb::Limits lim;
  check_throws<E>([&] { sleb::check_request(g, lim, {{1, 2, 3, 4, 5}}, opts); }, "fixed at export", "check_request");
  const std::vector<int64_t> ok{0, 6}, past_end{0, 7}, negative{-1, 0};
  sleb::check_static_step(2, 8, 2, 2, ok.data());
  check_throws<E>([&] { sleb::check_static_step(2, 8, 2, 2, past_end.data()); }, "row 1 writes 2 token(s) at slot 7",
                  "write past the buffer");
  check_throws<E>([&] { sleb::check_static_step(2, 8, 2, 1, negative.data()); }, "slot -1", "negative slot");
  check_throws<E>([&] { sleb::check_static_step(1, 8, 2, 1, ok.data()); }, "reserved for batch 1", "other batch");
}

void version_tests() {
  check(sleb::same_trt_version("10.13.0.35", "10.13.0"), "same version, build number ignored");
  check(!sleb::same_trt_version("10.8.0.43", "10.13.0"), "different minor");
  check(!sleb::same_trt_version("10.13.0.35", ""), "no runtime");
  sleb::EngineInfo e;
  e.plan_path = "model.plan";
  e.module = "tensorrt";
  e.version = "10.8.0.43";
  check_throws<sleb::ArtifactError>([&] { sleb::check_plan_runtime(e, "10.13.0"); }, "this host links TensorRT 10.13.0",
                                    "plan from another TensorRT");
  check_throws<sleb::MissingDependencyError>([&] { sleb::check_plan_runtime(e, ""); }, "built without TensorRT",
                                             "host without TensorRT");
  sleb::check_plan_runtime(e, "10.8.0");
  e.module = "tensorrt_rtx";
  check_throws<sleb::ArtifactError>([&] { sleb::check_plan_runtime(e, "10.8.0"); }, "TensorRT plans only",
                                    "TensorRT-RTX plan");
}

void conversion_tests() {
  check(sleb::half_to_float(0x3C00) == 1.0f && sleb::half_to_float(0xC000) == -2.0f, "fp16 normal");
  check(sleb::half_to_float(0x0001) == std::ldexp(1.0f, -24), "fp16 subnormal");
  check(std::isinf(sleb::half_to_float(0x7C00)), "fp16 inf");
  check(sleb::bf16_to_float(0x3F80) == 1.0f, "bf16");
}

void prompt_tests() {
  check(sleb::parse_prompts("1 2 3\n\n4 5\n") == std::vector<std::vector<int64_t>>({{1, 2, 3}, {4, 5}}), "prompt lines");
  check(sleb::parse_prompts(" [[1, 2], [3]]") == std::vector<std::vector<int64_t>>({{1, 2}, {3}}), "prompt JSON");
  check_throws<sleb::UserInputError>([] { sleb::parse_prompts("1 two 3"); }, "'two' is not a token id", "bad id");
  check_throws<sleb::UserInputError>([] { sleb::parse_prompts("[[1, 2.5]]"); }, "JSON list of lists", "bad JSON id");
}

}  // namespace

int main() {
  json_tests();
  padding_tests();
  limits_tests();
  static_cache_tests();
  version_tests();
  conversion_tests();
  prompt_tests();
  if (failures) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "all host unit checks passed\n";
  return 0;
}
