#pragma once
// A Deadline is a point in time passed down through a phase (pre-auth, login,
// LMTP transaction) so inner waits cannot outlive their caller's budget.
// `until()` bounds one asynchronous operation by a deadline; Boost 1.81 has
// no cancel_after, so this is the one helper every network wait goes through.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <list>
#include <tuple>
#include <utility>
#include <variant>

namespace isthmus {

using Clock = std::chrono::steady_clock;

// Completion token for data-path operations: errors come back as values.
inline constexpr auto use_tuple = boost::asio::as_tuple(boost::asio::use_awaitable);

class Deadline {
 public:
  static Deadline after(Clock::duration budget) { return Deadline(Clock::now() + budget); }
  static Deadline at(Clock::time_point when) { return Deadline(when); }
  static Deadline never() { return Deadline(Clock::time_point::max()); }

  Clock::time_point when() const { return when_; }
  bool is_never() const { return when_ == Clock::time_point::max(); }
  bool expired() const { return !is_never() && Clock::now() >= when_; }
  Clock::duration remaining() const {
    if (is_never()) return Clock::duration::max();
    auto left = when_ - Clock::now();
    return left > Clock::duration::zero() ? left : Clock::duration::zero();
  }
  // The earlier of this deadline and `budget` from now: an inner step with a
  // budget of its own never outlives the phase that called it.
  Deadline within(Clock::duration budget) const {
    auto now = Clock::now();
    if (is_never() || when_ - now > budget) return Deadline(now + budget);
    return *this;
  }

 private:
  explicit Deadline(Clock::time_point when) : when_(when) {}
  Clock::time_point when_;
};

class DeadlineWheel;

// While alive, a DeadlineGuard sits in its io_context's deadline wheel; when
// its deadline passes, the wheel emits terminal cancellation on the guard's
// signal. One coarse timer per io_context (it ticks every 50 ms while any
// guard is waiting) serves all guards: no timer and no extra coroutine per
// network operation, which is what made every wait cost a timerfd re-arm
// and two coroutine frames before.
//
// The wheel is an io_context service: it lives and dies with the
// io_context, and when that shuts down it lets go of every guard, so a
// coroutine frame destroyed later (on whatever thread) never touches it.
class DeadlineGuard {
 public:
  DeadlineGuard(const boost::asio::any_io_executor& executor, Deadline deadline);
  ~DeadlineGuard();
  DeadlineGuard(const DeadlineGuard&) = delete;
  DeadlineGuard& operator=(const DeadlineGuard&) = delete;

  boost::asio::cancellation_slot slot() { return signal_.slot(); }
  bool fired() const { return fired_; }

 private:
  friend class DeadlineWheel;
  Clock::time_point when_;
  boost::asio::cancellation_signal signal_;
  bool fired_ = false;
  bool registered_ = false;
  DeadlineWheel* wheel_ = nullptr;
  std::list<DeadlineGuard*>::iterator position_;  // in the wheel, while registered
};

// Runs an asynchronous operation until it completes or `deadline` passes.
// `initiate` starts the operation with the completion token it is given
// (e.g. [this, b](auto token) { return socket_.async_read_some(b, token); })
// and must yield a tuple whose first element is an error_code, as `use_tuple`
// does. On timeout the operation is cancelled and the error_code is
// boost::asio::error::timed_out.
//
// Create the lambda in a statement of its own, not inside the co_await
// expression: GCC 12 miscompiles a capturing lambda and co_await in one
// expression (tests/lint/check_sources.py).
template <typename Initiate>
auto until(Deadline deadline, Initiate initiate)
    -> boost::asio::awaitable<typename decltype(initiate(use_tuple))::value_type> {
  using Result = typename decltype(initiate(use_tuple))::value_type;
  if (deadline.is_never()) co_return co_await initiate(use_tuple);
  if (deadline.expired()) {
    Result timed_out{};
    std::get<0>(timed_out) = boost::asio::error::timed_out;
    co_return timed_out;
  }
  DeadlineGuard guard(co_await boost::asio::this_coro::executor, deadline);
  Result result = co_await initiate(boost::asio::bind_cancellation_slot(guard.slot(), use_tuple));
  if (guard.fired() && std::get<0>(result) == boost::asio::error::operation_aborted)
    std::get<0>(result) = boost::asio::error::timed_out;
  co_return result;
}

// Waits until `deadline` (or until cancelled).
inline boost::asio::awaitable<void> sleep_until(Deadline deadline) {
  if (deadline.is_never()) co_return;
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, deadline.when());
  co_await timer.async_wait(use_tuple);
}

}  // namespace isthmus
