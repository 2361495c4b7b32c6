// The KV-cache loop of engines/README.md section 5, once, over any backend and either KV-cache contract: left
// padding, position ids from the mask, one prefill forward, then one decode forward per new token; greedy. The
// reference is sleb_deploy/export/ort_generate.py (OrtGenerator.generate): the same tokens, row for row.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "sleb_host/manifests.hpp"

namespace sleb {

// One forward of the graph, in the contract `graph().kv_cache` names.
//
// Concatenating contract (section 5): `reserve` then `forward`. The backend owns two sets of KV buffers
// (ping-pong): the past is read from the current set (`past` positions long), the presents are written to the
// other set (`past + seq` long, never aliasing the past), and the sets swap. `reserve` sizes them for a whole
// generation first.
//
// Static contract (section 5c): `reserve_static` then `forward_static`. One zeroed buffer
// [batch, kv_heads, cache_len, head_dim] per K/V tensor, bound as both the past input and the present output of
// its layer, so the graph writes this step's rows into it in place (TensorScatter / KV_CACHE_UPDATE).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const GraphInfo& graph() const = 0;
  virtual const Limits& limits() const = 0;
  virtual void reserve(int64_t batch, int64_t max_total) = 0;
  // ids, pos: [batch, seq]; mask: [batch, past + seq]; writes the last position's logits as float [batch, V].
  virtual void forward(const int64_t* ids, const int64_t* mask, const int64_t* pos, int64_t batch, int64_t seq,
                       int64_t past, float* last_logits) = 0;
  virtual void reserve_static(int64_t batch, int64_t cache_len) = 0;
  // ids, pos: [batch, seq]; mask: [batch, cache_len] (1 = a slot to attend once this step is written);
  // write: [batch], the slot of each row's first token this step. Writes the last position's logits as float
  // [batch, V]. Throws UserInputError (check_static_step) before running a step that does not fit the buffers.
  virtual void forward_static(const int64_t* ids, const int64_t* mask, const int64_t* pos, const int64_t* write,
                              int64_t batch, int64_t seq, float* last_logits) = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;  // fills padding and finished rows; default: eos, else 0
  // Static contract: the KV buffer length; default the graph's fixed length, else prompt + max_new_tokens
  // (OrtGenerator.generate's max_cache_len). Refused for a concatenating graph.
  std::optional<int64_t> max_cache_len;
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
  int64_t cache_len = 0;   // static contract: the KV buffer length used (0: concatenating)
};

struct Padded {
  int64_t batch = 0, len = 0;
  std::vector<int64_t> ids, mask;  // [batch, len], row-major
};

Padded left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);

// HF generate's rule: cumsum(mask) - 1 clipped at 0, for every column of `mask` [batch, len].
std::vector<int64_t> position_ids(const std::vector<int64_t>& mask, int64_t batch, int64_t len);

// Throws UserInputError when the request does not fit `limits` or, for a static-cache graph, its KV buffer
// (cache_length): one line naming the limit.
void check_request(const GraphInfo& graph, const Limits& limits, const std::vector<std::vector<int64_t>>& prompts,
                   const GenerateOptions& opts);

// Static contract: the buffer length for a request whose padded prompt is `prompt_len` long; it must hold
// prompt_len + max_new_tokens - 1 slots (the last new token is returned, never written). 0 for a
// concatenating graph. Throws UserInputError (one line) when the request does not fit.
int64_t cache_length(const GraphInfo& graph, int64_t prompt_len, const GenerateOptions& opts);

// Static contract, at a backend's boundary (as OrtGenerator.run_static): the step's batch is the reserved
// one and every row's write + seq stays inside the cache_len slots. Throws UserInputError.
void check_static_step(int64_t reserved_batch, int64_t cache_len, int64_t batch, int64_t seq, const int64_t* write);

GenerateResult generate(Backend& backend, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& opts);

// Half-precision logits to float (the backends' shared conversion).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t b);
void logits_to_float(const void* src, const std::string& dtype, size_t count, float* dst);

}  // namespace sleb
