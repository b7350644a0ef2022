// Serving across data-parallel attention ranks: what the ranks tell each other before every
// step. Rank 0 holds the HTTP server and sends each new request to one rank, with cancellations
// of requests its clients dropped; every rank reports its load and sends back the tokens and ends
// of the requests it runs for rank 0's clients. All of it travels in one all_gather per step (two
// in fact: sizes, then the bytes), so every rank sees every message and all take the same
// decisions (stop, whether anyone has work) from the same facts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/request.h"

namespace trident {

// A rank's load and figures, as its serving engine counts them.
struct RankReport {
  bool has_work = false;        // requests running or waiting, or tokens not yet reported
  int64_t queued_tokens = 0;    // tokens of its requests not yet computed (prompts, mostly)
  int64_t held_pages = 0;       // KV pages its requests hold (cached pages nobody uses excluded)
  int64_t running = 0, waiting = 0;
  int64_t kv_pages_total = 0, kv_pages_used = 0, kv_pages_cached = 0;
  int64_t kv_filled_slots = 0;  // of the used pages' slots, those holding a token
  int64_t preemptions = 0, prompt_tokens = 0, cached_prompt_tokens = 0, evicted_pages = 0;
  int64_t computed_tokens = 0, steps = 0, generated_tokens = 0;

  // What a new request is weighed against: tokens waiting to be computed plus tokens of KV held.
  int64_t load(int page_size) const { return queued_tokens + held_pages * page_size; }
};

struct RankMessage {
  bool stop = false;  // any rank may ask the group to stop
  RankReport report;

  // Rank 0 only: requests for a rank to run, and requests a rank is to cancel.
  struct Assignment {
    int rank = 0;
    uint64_t id = 0;
    GenerationRequest request;
  };
  std::vector<Assignment> assignments;
  struct Cancel {
    int rank = 0;
    uint64_t id = 0;
  };
  std::vector<Cancel> cancels;

  // Other ranks: new tokens, and the end, of requests whose clients are rank 0's.
  struct Update {
    uint64_t id = 0;
    std::vector<TokenEvent> tokens;
    std::optional<RequestEnd> end;
  };
  std::vector<Update> updates;
};

std::string encode(const RankMessage& message);
// Throws trident::Error when the bytes are not a whole message.
RankMessage decode(std::string_view bytes);

// Every rank's message, in rank order; every rank of the group must call it with its own.
std::vector<RankMessage> exchange_messages(Communicator& comm, const RankMessage& mine,
                                           std::string_view what);

// The rank a new request goes to: the one with the least load; among equally loaded ranks (idle
// ones, say), the one given the fewest requests so far, then the lowest.
int least_loaded_rank(const std::vector<int64_t>& loads, const std::vector<int64_t>& given);

}  // namespace trident
