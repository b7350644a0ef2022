// Errors: one exception type whose message says what was wrong, with the value, and what to do.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace trident {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace trident

// TRI_CHECK(cond, "format {}", args...) throws trident::Error with the formatted message.
#define TRI_CHECK(cond, ...)                        \
  do {                                              \
    if (!(cond)) ::trident::fail(__VA_ARGS__);      \
  } while (0)
