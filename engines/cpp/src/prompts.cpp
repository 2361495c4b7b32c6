#include "sleb_host/prompts.hpp"

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "sleb_host/errors.hpp"
#include "sleb_host/json.hpp"

namespace sleb {

std::vector<std::vector<int64_t>> parse_prompts(const std::string& text) {
  std::vector<std::vector<int64_t>> rows;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    try {
      const Json doc = Json::parse(text);  // named: a range-for over a temporary's member would dangle
      for (const Json& row : doc.as_array()) {
        rows.emplace_back();
        for (const Json& id : row.as_array()) rows.back().push_back(id.as_int());
      }
    } catch (const std::runtime_error& e) {
      throw UserInputError(std::string("prompts: not a JSON list of lists of token ids (") + e.what() + ")");
    }
    return rows;
  }
  std::istringstream lines(text);
  std::string line;
  size_t n = 0;
  while (std::getline(lines, line)) {
    ++n;
    std::istringstream words(line);
    std::string word;
    std::vector<int64_t> row;
    while (words >> word) {
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(word.c_str(), &end, 10);
      if (*end != '\0' || errno == ERANGE)
        throw UserInputError("prompts line " + std::to_string(n) + ": '" + word + "' is not a token id");
      row.push_back(v);
    }
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

}  // namespace sleb
