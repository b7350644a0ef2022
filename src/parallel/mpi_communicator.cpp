#include "parallel/mpi_communicator.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <thread>

namespace trident {

namespace {

constexpr int kPayloadTag = 1;
constexpr int kControlTag = 2;
constexpr size_t kMaxMessage = size_t(1) << 30;

struct ControlHeader {
  uint64_t sequence;
  char what[56];
};

ControlHeader make_header(uint64_t sequence, std::string_view what) {
  ControlHeader h{sequence, {}};
  std::memcpy(h.what, what.data(), std::min(what.size(), sizeof(h.what) - 1));
  return h;
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(code, text, &n);
  return std::string(text, n);
}

// Polls often at first (a collective usually completes within microseconds), then yields the
// core: ranks oversubscribed on few cores must not starve the rank everyone waits for.
class Backoff {
 public:
  void pause() {
    if (++polls_ < 64) {
      sched_yield();
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    sleep_us_ = std::min(sleep_us_ * 2, 1000);
  }

 private:
  int polls_ = 0;
  int sleep_us_ = 20;
};

std::string rank_list(const std::vector<int>& ranks) {
  return fmt::format("{} {}", ranks.size() == 1 ? "rank" : "ranks", fmt::join(ranks, ", "));
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::chrono::milliseconds timeout) : comm_(comm) {
  set_timeout(timeout);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

void MpiCommunicator::set_timeout(std::chrono::milliseconds timeout) {
  TRI_CHECK(timeout.count() > 0, "the collective timeout must be positive, got {} ms",
            timeout.count());
  timeout_ = timeout;
}

void MpiCommunicator::post_send(const void* data, size_t bytes, int peer, int tag,
                                std::vector<Pending>& out) {
  const char* p = static_cast<const char*>(data);
  for (size_t off = 0; off < bytes; off += kMaxMessage) {
    Pending s{MPI_REQUEST_NULL, peer, false};
    int n = int(std::min(kMaxMessage, bytes - off));
    int rc = MPI_Isend(p + off, n, MPI_BYTE, peer, tag, comm_, &s.request);
    if (rc != MPI_SUCCESS)
      throw RankFailure(fmt::format("sending to rank {} failed: {}", peer, mpi_error_text(rc)));
    out.push_back(s);
  }
}

void MpiCommunicator::post_receive(void* data, size_t bytes, int peer, int tag,
                                   std::vector<Pending>& out) {
  char* p = static_cast<char*>(data);
  for (size_t off = 0; off < bytes; off += kMaxMessage) {
    Pending r{MPI_REQUEST_NULL, peer, true};
    int n = int(std::min(kMaxMessage, bytes - off));
    int rc = MPI_Irecv(p + off, n, MPI_BYTE, peer, tag, comm_, &r.request);
    if (rc != MPI_SUCCESS)
      throw RankFailure(fmt::format("receiving from rank {} failed: {}", peer, mpi_error_text(rc)));
    out.push_back(r);
  }
}

void MpiCommunicator::wait(std::vector<Pending>& pending, std::string_view what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  std::vector<MPI_Request> requests(pending.size());
  for (size_t i = 0; i < pending.size(); ++i) requests[i] = pending[i].request;
  std::vector<int> done(pending.size());
  std::vector<MPI_Status> status(pending.size());
  int remaining = int(pending.size());
  Backoff backoff;
  while (remaining > 0) {
    int n = 0;
    int rc = MPI_Testsome(int(requests.size()), requests.data(), &n, done.data(), status.data());
    if (rc != MPI_SUCCESS) {
      for (int i = 0; i < std::max(n, 0); ++i) {
        int e = status[i].MPI_ERROR;
        if (e != MPI_SUCCESS && e != MPI_ERR_PENDING)
          throw RankFailure(
              fmt::format("{} rank {} failed during '{}': {}",
                          pending[done[i]].is_receive ? "receiving from" : "sending to",
                          pending[done[i]].peer, what, mpi_error_text(e)));
      }
      throw RankFailure(fmt::format("MPI failed during '{}': {}", what, mpi_error_text(rc)));
    }
    if (n == MPI_UNDEFINED) break;
    remaining -= n;
    if (remaining == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      std::vector<int> missing;
      for (size_t i = 0; i < requests.size(); ++i)
        if (requests[i] != MPI_REQUEST_NULL) missing.push_back(pending[i].peer);
      std::sort(missing.begin(), missing.end());
      missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
      throw RankFailure(fmt::format(
          "{} did not arrive at '{}' within {:.3g} s: exited, crashed or hung (the limit is "
          "--ep-timeout)",
          rank_list(missing), what, timeout_.count() / 1000.0));
    }
    if (n == 0) backoff.pause();
  }
}

void MpiCommunicator::control_exchange(const std::vector<std::string>& send,
                                       std::vector<std::string>& recv, size_t recv_bytes,
                                       std::string_view what) {
  const ControlHeader mine = make_header(sequence_++, what);
  std::vector<std::string> out(size_);
  recv.assign(size_, std::string(sizeof(ControlHeader) + recv_bytes, '\0'));
  std::vector<Pending> pending;
  for (int peer = 0; peer < size_; ++peer) {
    out[peer].assign(reinterpret_cast<const char*>(&mine), sizeof(mine));
    out[peer] += send[peer];
    if (peer == rank_) {
      recv[peer] = out[peer];
      continue;
    }
    post_receive(recv[peer].data(), recv[peer].size(), peer, kControlTag, pending);
  }
  for (int peer = 0; peer < size_; ++peer)
    if (peer != rank_) post_send(out[peer].data(), out[peer].size(), peer, kControlTag, pending);
  wait(pending, what);
  for (int peer = 0; peer < size_; ++peer) {
    ControlHeader theirs;
    std::memcpy(&theirs, recv[peer].data(), sizeof(theirs));
    if (theirs.sequence != mine.sequence || std::strcmp(theirs.what, mine.what) != 0)
      throw RankFailure(fmt::format(
          "rank {} is at collective #{} '{}' while rank {} is at #{} '{}': the ranks took "
          "different paths through the step",
          peer, theirs.sequence, theirs.what, rank_, mine.sequence, mine.what));
    recv[peer].erase(0, sizeof(ControlHeader));
  }
}

void MpiCommunicator::all_gather(const void* mine, size_t bytes, void* all, std::string_view what) {
  std::vector<std::string> send(size_, std::string(static_cast<const char*>(mine), bytes)), recv;
  control_exchange(send, recv, bytes, what);
  for (int peer = 0; peer < size_; ++peer)
    std::memcpy(static_cast<char*>(all) + peer * bytes, recv[peer].data(), bytes);
}

void MpiCommunicator::exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv,
                                      std::string_view what) {
  TRI_CHECK(int(send.size()) == size_ && int(recv.size()) == size_,
            "exchange_counts: {} counts to send and {} to receive for {} ranks", send.size(),
            recv.size(), size_);
  std::vector<std::string> out(size_), in;
  for (int peer = 0; peer < size_; ++peer)
    out[peer].assign(reinterpret_cast<const char*>(&send[peer]), sizeof(int64_t));
  control_exchange(out, in, sizeof(int64_t), what);
  for (int peer = 0; peer < size_; ++peer)
    std::memcpy(&recv[peer], in[peer].data(), sizeof(int64_t));
}

void MpiCommunicator::all_to_all_v(const void* send, std::span<const size_t> send_bytes, void* recv,
                                   std::span<const size_t> recv_bytes, std::string_view what) {
  TRI_CHECK(int(send_bytes.size()) == size_ && int(recv_bytes.size()) == size_,
            "all_to_all_v: {} send and {} receive sizes for {} ranks", send_bytes.size(),
            recv_bytes.size(), size_);
  std::vector<size_t> send_off(size_ + 1, 0), recv_off(size_ + 1, 0);
  for (int r = 0; r < size_; ++r) {
    send_off[r + 1] = send_off[r] + send_bytes[r];
    recv_off[r + 1] = recv_off[r] + recv_bytes[r];
  }
  const char* s = static_cast<const char*>(send);
  char* d = static_cast<char*>(recv);
  TRI_CHECK(send_bytes[rank_] == recv_bytes[rank_],
            "all_to_all_v '{}': rank {} sends itself {} bytes but expects {}", what, rank_,
            send_bytes[rank_], recv_bytes[rank_]);
  if (recv_bytes[rank_] > 0)
    std::memcpy(d + recv_off[rank_], s + send_off[rank_], recv_bytes[rank_]);
  std::vector<Pending> pending;
  for (int peer = 0; peer < size_; ++peer)
    if (peer != rank_ && recv_bytes[peer] > 0)
      post_receive(d + recv_off[peer], recv_bytes[peer], peer, kPayloadTag, pending);
  for (int peer = 0; peer < size_; ++peer)
    if (peer != rank_ && send_bytes[peer] > 0)
      post_send(s + send_off[peer], send_bytes[peer], peer, kPayloadTag, pending);
  wait(pending, what);
}

}  // namespace trident
