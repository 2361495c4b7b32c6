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

void check_request(const Limits& limits, const std::vector<std::vector<int64_t>>& prompts,
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
  check_request(backend.limits(), prompts, opts);
  const int64_t fill = opts.pad_token_id ? *opts.pad_token_id : (opts.eos_token_id ? *opts.eos_token_id : 0);
  const int64_t vocab = backend.graph().vocab_size;
  Padded p = left_pad(prompts, fill);
  const int64_t batch = p.batch;
  backend.reserve(batch, p.len + opts.max_new_tokens - 1);

  GenerateResult result;
  result.prompt_len = p.len;
  result.new_tokens.assign(batch, {});
  std::vector<int64_t> mask = p.mask, cur = p.ids, pos = position_ids(p.mask, batch, p.len);
  std::vector<int64_t> last_pos(batch);
  for (int64_t b = 0; b < batch; ++b) last_pos[b] = pos[b * p.len + p.len - 1];
  std::vector<float> logits(batch * vocab);
  std::vector<bool> done(batch, false);
  int64_t seq = p.len, past = 0;

  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    auto t0 = clock::now();
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
    if (opts.eos_token_id && all_done) break;
    // The next step: one new token per row, the mask one column longer, positions one further.
    past += seq;
    seq = 1;
    cur.resize(batch);
    std::vector<int64_t> grown(batch * (past + 1));
    for (int64_t b = 0; b < batch; ++b) {
      std::copy(mask.begin() + b * past, mask.begin() + (b + 1) * past, grown.begin() + b * (past + 1));
      grown[b * (past + 1) + past] = 1;
    }
    mask.swap(grown);
    pos.resize(batch);
    for (int64_t b = 0; b < batch; ++b) pos[b] = ++last_pos[b];
  }
  return result;
}

}  // namespace sleb
