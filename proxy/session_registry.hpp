#pragma once
// The sessions living on one worker. Touched only from that worker's thread;
// the live count is readable from any thread (shutdown waits on it).

#include "proxy/session.hpp"

#include <algorithm>
#include <atomic>
#include <list>

namespace isthmus::proxy {

class SessionRegistry {
 public:
  // `total`, if set, counts the sessions of every worker together (the
  // connection limit, proxy/server.cpp).
  explicit SessionRegistry(std::atomic<std::size_t>* total = nullptr) : total_(total) {}

  std::list<Session*>::iterator add(Session* session) {
    live_.fetch_add(1, std::memory_order_relaxed);
    if (total_) total_->fetch_add(1, std::memory_order_relaxed);
    return sessions_.insert(sessions_.end(), session);
  }
  void remove(std::list<Session*>::iterator position) {
    sessions_.erase(position);
    live_.fetch_sub(1, std::memory_order_relaxed);
    if (total_) total_->fetch_sub(1, std::memory_order_relaxed);
  }
  // The oldest IMAP/POP3 session not yet logged in and not already asked
  // to stop (sessions are kept in the order they started), or null.
  Session* oldest_not_logged_in() const {
    for (Session* session : sessions_)
      if (session->phase() != Phase::relay && session->record().protocol != config::Protocol::lmtp &&
          session->stop_requested() == StopKind::none)
        return session;
    return nullptr;
  }
  // Asks every session to stop; `kind` says how hard.
  void stop_all(StopKind kind) {
    stopping_ = std::max(stopping_, kind);
    // request_stop may end a session synchronously only through its own
    // coroutine resuming later, so iterating here is safe.
    for (Session* session : sessions_) session->request_stop(kind);
  }
  // The strongest stop_all so far: a session that starts after it (its
  // connection accepted just before the listener closed) is asked to stop
  // too, or a stop would wait the whole grace period for it.
  StopKind stopping() const { return stopping_; }
  std::size_t live() const { return live_.load(std::memory_order_relaxed); }

  // Every session, for a look or a kick (from the worker's thread; do not
  // keep the pointers past the current handler).
  const std::list<Session*>& sessions() const { return sessions_; }

 private:
  std::list<Session*> sessions_;
  StopKind stopping_ = StopKind::none;
  std::atomic<std::size_t> live_{0};
  std::atomic<std::size_t>* total_ = nullptr;
};

}  // namespace isthmus::proxy
