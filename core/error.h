// Error type for ShardQuant: one line that names where the problem is (file, tensor, key, rank).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace sq {

// Where an error happened. Every field is optional; what() prints the ones that are set, in the
// order file, key, tensor, rank, before the message, so a user can find the culprit at once.
struct ErrorContext {
  std::string file{};
  std::string key{};     // a config key, JSON path or recipe key
  std::string tensor{};  // a tensor name inside a checkpoint
  int rank = -1;         // the MPI rank that saw the error (-1: not known / single process)
};

class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, ErrorContext context = {});

  const std::string& message() const { return message_; }
  const ErrorContext& context() const { return context_; }

  // Copies with one more piece of context filled in (fields already set are kept).
  Error with_file(std::string file) const;
  Error with_key(std::string key) const;
  Error with_tensor(std::string tensor) const;
  Error with_rank(int rank) const;

 private:
  static std::string compose(const std::string& message, const ErrorContext& context);
  std::string message_;
  ErrorContext context_;
};

// throw sq::Error with a formatted message.
template <typename... Args>
[[noreturn]] void fail(ErrorContext context, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...), std::move(context));
}

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace sq

// Checks an invariant that callers must hold (a programming error, not bad input).
#define SQ_CHECK(cond, ...)                                                            \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      ::sq::fail("internal check failed at {}:{}: {} ({})", __FILE__, __LINE__, #cond, \
                 ::fmt::format(__VA_ARGS__));                                          \
    }                                                                                  \
  } while (0)
