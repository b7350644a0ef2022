#include "serve/stream_decoder.h"

#include "serve/tokenizer.h"

namespace trident {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The well-formed range of the second byte after lead byte `lead` (Unicode Table 3-7), and how
// many bytes the whole sequence has; 0 for a byte that cannot start a sequence.
struct LeadInfo {
  int length;
  unsigned char second_lo, second_hi;
};

LeadInfo lead_info(unsigned char lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead >= 0xC2 && lead <= 0xDF) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};  // no UTF-16 surrogates
  if (lead >= 0xE1 && lead <= 0xEF) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead >= 0xF1 && lead <= 0xF3) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};  // nothing past U+10FFFF
  return {0, 0, 0};
}

// The length of the well-formed prefix of the sequence starting at `pos` (a maximal subpart when
// it is shorter than the sequence), and whether it ran into the end of `bytes`.
struct SequenceScan {
  int valid, length;
  bool truncated;
};

SequenceScan scan_sequence(std::string_view bytes, size_t pos) {
  const LeadInfo info = lead_info(static_cast<unsigned char>(bytes[pos]));
  if (info.length <= 1) return {info.length, 1, false};
  int valid = 1;
  for (; valid < info.length; ++valid) {
    if (pos + valid >= bytes.size()) return {valid, info.length, true};
    const auto c = static_cast<unsigned char>(bytes[pos + valid]);
    const bool ok = valid == 1 ? (c >= info.second_lo && c <= info.second_hi) : (c & 0xC0) == 0x80;
    if (!ok) break;
  }
  return {valid, info.length, false};
}

}  // namespace

size_t append_utf8_lossy(std::string_view bytes, bool at_end, std::string& out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const SequenceScan s = scan_sequence(bytes, pos);
    if (s.truncated && !at_end) break;
    if (s.valid == s.length) {
      out.append(bytes.substr(pos, s.length));
      pos += s.length;
    } else {
      out += kReplacement;
      pos += s.valid == 0 ? 1 : s.valid;
    }
  }
  return pos;
}

size_t find_invalid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const SequenceScan s = scan_sequence(text, pos);
    if (s.valid != s.length) return pos;
    pos += s.length;
  }
  return std::string_view::npos;
}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  std::string text;
  pending_.erase(0, append_utf8_lossy(pending_, false, text));
  return text;
}

std::string StreamDecoder::finish() {
  std::string text;
  append_utf8_lossy(pending_, true, text);
  pending_.clear();
  return text;
}

}  // namespace trident
