#include "sleb_host/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "sleb_host/errors.hpp"

namespace sleb {

Padded left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id) {
  Padded p;
  p.batch = static_cast<int64_t>(prompts.size());
  for (const auto& row : prompts) p.len = std::max<int64_t>(p.len, static_cast<int64_t>(row.size()));
  p.ids.assign(p.batch * p.len, pad_id);
  p.mask.assign(p.batch * p.len, 0);
  for (int64_t b = 0; b < p.batch; ++b) {
    const auto& row = prompts[b];
    int64_t off = p.len - static_cast<int64_t>(row.size());
    for (size_t t = 0; t < row.size(); ++t) {
      p.ids[b * p.len + off + t] = row[t];
      p.mask[b * p.len + off + t] = 1;
    }
  }
  return p;
}

std::vector<int64_t> position_ids(const std::vector<int64_t>& mask, int64_t batch, int64_t len) {
  std::vector<int64_t> pos(batch * len);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t sum = 0;
    for (int64_t t = 0; t < len; ++t) {
      sum += mask[b * len + t];
      pos[b * len + t] = std::max<int64_t>(sum - 1, 0);
    }
  }
  return pos;
}

void check_request(const GraphInfo& graph, const Limits& limits, const std::vector<std::vector<int64_t>>& prompts,
                   const GenerateOptions& opts) {
  if (prompts.empty()) throw UserInputError("no prompt given: one prompt per line (token ids), or a JSON list of lists");
  if (opts.max_new_tokens < 1) throw UserInputError("--max-new-tokens must be at least 1");
  const auto batch = static_cast<int64_t>(prompts.size());
  if (limits.max_batch && batch > limits.max_batch)
    throw UserInputError(std::to_string(batch) + " prompts exceed the engine's max batch of " +
                         std::to_string(limits.max_batch) + ": send fewer at a time or rebuild with a larger --max-batch");
  int64_t len = 0;
  for (size_t r = 0; r < prompts.size(); ++r) {
    if (prompts[r].empty()) throw UserInputError("prompt " + std::to_string(r) + " is empty");
    len = std::max<int64_t>(len, static_cast<int64_t>(prompts[r].size()));
    for (int64_t id : prompts[r])
      if (id < 0 || (limits.vocab_size && id >= limits.vocab_size))
        throw UserInputError("prompt " + std::to_string(r) + " has token id " + std::to_string(id) +
                             ", outside the vocabulary 0.." + std::to_string(limits.vocab_size - 1));
  }
  if (limits.max_input_len && len > limits.max_input_len)
    throw UserInputError("a prompt of " + std::to_string(len) + " tokens exceeds the engine's max input length of " +
                         std::to_string(limits.max_input_len) + ": shorten it or rebuild with a larger --max-input-len");
  const int64_t context = len + opts.max_new_tokens - 1;
  if (limits.max_context_len && context > limits.max_context_len)
    throw UserInputError(std::to_string(len) + " prompt tokens + " + std::to_string(opts.max_new_tokens) +
                         " new tokens need a context of " + std::to_string(context) + ", over the limit of " +
                         std::to_string(limits.max_context_len) + ": lower --max-new-tokens or shorten the prompt");
  cache_length(graph, len, opts);
}

int64_t cache_length(const GraphInfo& graph, int64_t prompt_len, const GenerateOptions& opts) {
  if (!graph.is_static()) {
    if (opts.max_cache_len)
      throw UserInputError("--max-cache-len is for static-cache exports (sleb-deploy onnx --kv-cache static); this graph concatenates its KV cache: drop it");
    return 0;
  }
  const std::string fixed = std::to_string(graph.max_cache_len);
  if (opts.max_cache_len && *opts.max_cache_len < 1) throw UserInputError("--max-cache-len must be at least 1");
  if (opts.max_cache_len && graph.max_cache_len && *opts.max_cache_len != graph.max_cache_len)
    throw UserInputError("this graph's KV cache buffers have " + fixed + " slots (fixed at export), not " +
                         std::to_string(*opts.max_cache_len) + ": drop --max-cache-len or re-export with --max-cache-len " +
                         std::to_string(*opts.max_cache_len));
  const int64_t length = opts.max_cache_len   ? *opts.max_cache_len
                         : graph.max_cache_len ? graph.max_cache_len
                                               : prompt_len + opts.max_new_tokens;
  const int64_t needed = prompt_len + opts.max_new_tokens - 1;
  if (length < needed)
    throw UserInputError("the KV cache buffer has " + std::to_string(length) + " slots, fewer than the " +
                         std::to_string(needed) + " this request writes (prompt " + std::to_string(prompt_len) + " + " +
                         std::to_string(opts.max_new_tokens) + " new tokens - 1): lower --max-new-tokens, shorten the prompt" +
                         (graph.max_cache_len ? " or re-export with a larger --max-cache-len" : " or raise --max-cache-len"));
  return length;
}

void check_static_step(int64_t reserved_batch, int64_t cache_len, int64_t batch, int64_t seq, const int64_t* write) {
  if (batch != reserved_batch)
    throw UserInputError("a step of batch " + std::to_string(batch) + " on KV cache buffers reserved for batch " +
                         std::to_string(reserved_batch) + ": reserve_static first");
  for (int64_t b = 0; b < batch; ++b)
    if (write[b] < 0 || write[b] + seq > cache_len)
      throw UserInputError("row " + std::to_string(b) + " writes " + std::to_string(seq) + " token(s) at slot " +
                           std::to_string(write[b]) + ", outside the " + std::to_string(cache_len) +
                           "-slot KV cache buffer");
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) { mant <<= 1; --exp; }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

void logits_to_float(const void* src, const std::string& dtype, size_t count, float* dst) {
  if (dtype == "fp32") {
    std::memcpy(dst, src, count * sizeof(float));
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src);
  for (size_t i = 0; i < count; ++i) dst[i] = dtype == "fp16" ? half_to_float(h[i]) : bf16_to_float(h[i]);
}

GenerateResult generate(Backend& backend, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts) {
  using clock = std::chrono::steady_clock;
  const GraphInfo& graph = backend.graph();
  check_request(graph, backend.limits(), prompts, opts);
  const int64_t fill = opts.pad_token_id ? *opts.pad_token_id : (opts.eos_token_id ? *opts.eos_token_id : 0);
  const int64_t vocab = graph.vocab_size;
  Padded p = left_pad(prompts, fill);
  const int64_t batch = p.batch;
  // Static contract: the buffers once per request; the mask covers them (the prompt's mask in slots
  // 0 .. len - 1, zeros after) and each step writes at `write` (0, then len, len + 1, ...: with left padding
  // every row's next slot is the same). Concatenating: the ping-pong sets, sized for the whole generation.
  const int64_t cache_len = cache_length(graph, p.len, opts);
  std::vector<int64_t> write(batch, 0);
  if (graph.is_static())
    backend.reserve_static(batch, cache_len);
  else
    backend.reserve(batch, p.len + opts.max_new_tokens - 1);

  GenerateResult result;
  result.prompt_len = p.len;
  result.cache_len = cache_len;
  result.new_tokens.assign(batch, {});
  std::vector<int64_t> mask = p.mask, cur = p.ids, pos = position_ids(p.mask, batch, p.len);
  if (graph.is_static()) {
    mask.assign(batch * cache_len, 0);
    for (int64_t b = 0; b < batch; ++b) std::copy_n(p.mask.begin() + b * p.len, p.len, mask.begin() + b * cache_len);
  }
  std::vector<int64_t> last_pos(batch);
  for (int64_t b = 0; b < batch; ++b) last_pos[b] = pos[b * p.len + p.len - 1];
  std::vector<float> logits(batch * vocab);
  std::vector<bool> done(batch, false);
  int64_t seq = p.len, past = 0;

  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    auto t0 = clock::now();
    if (graph.is_static())
      backend.forward_static(cur.data(), mask.data(), pos.data(), write.data(), batch, seq, logits.data());
    else
      backend.forward(cur.data(), mask.data(), pos.data(), batch, seq, past, logits.data());
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      const float* row = logits.data() + b * vocab;
      const int64_t best = std::max_element(row, row + vocab) - row;  // first maximum, as numpy's argmax
      const int64_t next = done[b] ? fill : best;
      result.new_tokens[b].push_back(next);
      cur[b] = next;
      if (opts.eos_token_id && next == *opts.eos_token_id) done[b] = true;
      all_done = all_done && done[b];
    }
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (step == 0) {
      result.timing.prefill_ms = ms;
    } else {
      result.timing.decode_ms += ms;
      ++result.timing.decode_steps;
    }
    if ((opts.eos_token_id && all_done) || step + 1 == opts.max_new_tokens) break;
    // The next step (none after the last: a buffer that holds the request exactly has no slot for it): one new token per row, positions one further; the mask one column longer (concat) or
    // one more slot set, the one this step writes (static).
    past += seq;
    seq = 1;
    cur.resize(batch);
    if (graph.is_static()) {
      for (int64_t b = 0; b < batch; ++b) {
        write[b] = past;
        mask[b * cache_len + past] = 1;
      }
    } else {
      std::vector<int64_t> grown(batch * (past + 1));
      for (int64_t b = 0; b < batch; ++b) {
        std::copy(mask.begin() + b * past, mask.begin() + (b + 1) * past, grown.begin() + b * (past + 1));
        grown[b * (past + 1) + past] = 1;
      }
      mask.swap(grown);
    }
    pos.resize(batch);
    for (int64_t b = 0; b < batch; ++b) pos[b] = ++last_pos[b];
  }
  return result;
}

}  // namespace sleb
