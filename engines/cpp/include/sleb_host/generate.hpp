// The KV-cache loop of engines/README.md section 5, once, over any backend: left padding, position ids from
// the mask, one prefill forward, then one decode forward per new token; greedy. The reference is
// sleb_deploy/export/ort_generate.py (OrtGenerator.generate): the same tokens, row for row.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "sleb_host/manifests.hpp"

namespace sleb {

// One forward of the graph. The backend owns two sets of KV buffers (ping-pong): the past is read from the
// current set (`past` positions long), the presents are written to the other set (`past + seq` long, never
// aliasing the past), and the sets swap. `reserve` sizes them for a whole generation first.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const GraphInfo& graph() const = 0;
  virtual const Limits& limits() const = 0;
  virtual void reserve(int64_t batch, int64_t max_total) = 0;
  // ids, pos: [batch, seq]; mask: [batch, past + seq]; writes the last position's logits as float [batch, V].
  virtual void forward(const int64_t* ids, const int64_t* mask, const int64_t* pos, int64_t batch, int64_t seq,
                       int64_t past, float* last_logits) = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;  // fills padding and finished rows; default: eos, else 0
};

struct Timing {
  double prefill_ms = 0.0;  // the first forward (whole prompt) + its argmax
  int64_t decode_steps = 0;
  double decode_ms = 0.0;  // all later forwards
  double decode_ms_per_token() const { return decode_steps ? decode_ms / decode_steps : 0.0; }
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> new_tokens;  // per row, max_new_tokens long unless every row hit eos
  Timing timing;
  int64_t prompt_len = 0;  // after left padding
};

struct Padded {
  int64_t batch = 0, len = 0;
  std::vector<int64_t> ids, mask;  // [batch, len], row-major
};

Padded left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);

// HF generate's rule: cumsum(mask) - 1 clipped at 0, for every column of `mask` [batch, len].
std::vector<int64_t> position_ids(const std::vector<int64_t>& mask, int64_t batch, int64_t len);

// Throws UserInputError when the request does not fit `limits` (one line naming the limit).
void check_request(const Limits& limits, const std::vector<std::vector<int64_t>>& prompts,
                   const GenerateOptions& opts);

GenerateResult generate(Backend& backend, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts);

// Half-precision logits to float (the backends' shared conversion).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t b);
void logits_to_float(const void* src, const std::string& dtype, size_t count, float* dst);

}  // namespace sleb
