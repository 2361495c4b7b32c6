// A small JSON reader for the manifests the host reads (export.json, engine.json, config.json) and for
// prompts given as JSON. Enough of RFC 8259 for machine-written files: objects, arrays, strings (with \uXXXX
// escapes, surrogate pairs included), numbers, true/false/null. Not a general-purpose library: no writer,
// no streaming; the files are a few kilobytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sleb {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  static Json parse(const std::string& text);  // throws std::runtime_error("... at offset N")

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_bool() const { return kind_ == Kind::Bool; }

  // Typed access; each throws std::runtime_error naming the expected kind on a mismatch.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;  // a number with no fractional part
  const std::string& as_string() const;
  const std::vector<Json>& as_array() const;
  const std::map<std::string, Json>& as_object() const;

  bool has(const std::string& key) const;
  const Json& at(const std::string& key) const;  // throws "missing key 'k'"

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0.0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  friend class JsonParser;
};

std::string read_text_file(const std::string& path);  // throws std::runtime_error when unreadable

}  // namespace sleb
