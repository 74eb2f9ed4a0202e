#include "core/error.h"

namespace sq {

Error::Error(std::string message, ErrorContext context)
    : std::runtime_error(compose(message, context)),
      message_(std::move(message)),
      context_(std::move(context)) {}

std::string Error::compose(const std::string& message, const ErrorContext& c) {
  std::string out;
  if (!c.file.empty()) out += fmt::format("{}: ", c.file);
  if (!c.key.empty()) out += fmt::format("key '{}': ", c.key);
  if (!c.tensor.empty()) out += fmt::format("tensor '{}': ", c.tensor);
  if (c.rank >= 0) out += fmt::format("rank {}: ", c.rank);
  return out + message;
}

Error Error::with_file(std::string file) const {
  ErrorContext c = context_;
  if (c.file.empty()) c.file = std::move(file);
  return Error(message_, c);
}
Error Error::with_key(std::string key) const {
  ErrorContext c = context_;
  if (c.key.empty()) c.key = std::move(key);
  return Error(message_, c);
}
Error Error::with_tensor(std::string tensor) const {
  ErrorContext c = context_;
  if (c.tensor.empty()) c.tensor = std::move(tensor);
  return Error(message_, c);
}
Error Error::with_rank(int rank) const {
  ErrorContext c = context_;
  if (c.rank < 0) c.rank = rank;
  return Error(message_, c);
}

}  // namespace sq
