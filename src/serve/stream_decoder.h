// Turning token bytes into text that is always valid UTF-8. A byte-level BPE token can end in the
// middle of a character, so a single token, or a prefix of a generation, may not be valid UTF-8 on
// its own. Invalid bytes become U+FFFD the way HuggingFace `tokenizers` (Rust's from_utf8_lossy)
// does it: one replacement per maximal invalid subpart.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace trident {

class Tokenizer;

// Appends `bytes` to `out` as valid UTF-8 and returns how many bytes it consumed. With
// `at_end` false it stops before a trailing sequence that is still incomplete (more bytes could
// make it a character); with `at_end` true it consumes everything.
size_t append_utf8_lossy(std::string_view bytes, bool at_end, std::string& out);

// The byte offset of the first invalid UTF-8 sequence in `text`, or npos when it is all valid.
size_t find_invalid_utf8(std::string_view text);

// Streaming detokenizer: push ids one at a time and get back only complete UTF-8 text. The
// concatenation of every push() and the final finish() equals Tokenizer::decode of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  // The bytes still held back (an incomplete character at the end), as U+FFFD.
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace trident
