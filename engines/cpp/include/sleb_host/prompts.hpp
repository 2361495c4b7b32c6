// Prompts as token ids: a JSON list of lists ([[1, 2, 3], [4, 5]]) or one prompt per line, ids separated by
// whitespace. Tokenization stays with the caller (Python's tokenizer, a server's own).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sleb {

std::vector<std::vector<int64_t>> parse_prompts(const std::string& text);  // throws UserInputError

}  // namespace sleb
