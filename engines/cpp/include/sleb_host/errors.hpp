// The host's error kinds, with the exit codes of sleb_deploy/errors.py so a script treats the C++ CLI and
// the Python CLI alike. Each message is one line that says what to do.
#pragma once

#include <stdexcept>
#include <string>

namespace sleb {

struct HostError : std::runtime_error {
  HostError(const std::string& msg, int code) : std::runtime_error(msg), exit_code(code) {}
  int exit_code;
};

// A flag, a path or a value the user gave is wrong (a prompt over the limits, a bad token id).
struct UserInputError : HostError {
  explicit UserInputError(const std::string& msg) : HostError(msg, 2) {}
};

// An input artifact is missing or incompatible (not an export, a plan for another TensorRT).
struct ArtifactError : HostError {
  explicit ArtifactError(const std::string& msg) : HostError(msg, 3) {}
};

// This build of the host lacks a backend (TensorRT not found at build time, no CUDA EP in the library).
struct MissingDependencyError : HostError {
  explicit MissingDependencyError(const std::string& msg) : HostError(msg, 4) {}
};

}  // namespace sleb
