// Byte-level BPE tokenizer read from a HuggingFace tokenizer.json, giving the same ids as the
// `tokenizers` library: added tokens are split out first (those marked normalized=false, then
// the rest, each leftmost-longest), the remaining text goes through the pre-tokenizer's regex
// splits (DeepSeek-V3's Sequence of Splits, or GPT-2's ByteLevel regex), and each piece is mapped
// to byte-level symbols and merged by rank.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "serve/stream_decoder.h"

namespace trident {

class Tokenizer {
 public:
  // Reads dir/tokenizer.json and, when present, dir/tokenizer_config.json (bos/eos tokens).
  static Tokenizer from_dir(const std::filesystem::path& dir);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Special and added tokens written in the text are recognised; no BOS is added. The text must
  // be valid UTF-8.
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids that name no token are ignored, as `tokenizers` does; the result is valid UTF-8.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // The bytes one token stands for (possibly part of a UTF-8 character); empty for an id that
  // names no token.
  const std::string& token_bytes(int32_t id) const;

  int32_t bos_id() const;
  int32_t eos_id() const;  // -1 if none
  // One past the largest token id (vocabulary and added tokens).
  int32_t vocab_size() const;
  // Added tokens marked special (skipped by decode with skip_special).
  bool is_special(int32_t id) const;
  // The id of a token by its vocabulary string (byte-level form) or added-token content.
  std::optional<int32_t> token_id(std::string_view token) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace trident
