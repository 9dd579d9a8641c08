#include "common/deadline.hpp"

#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/query.hpp>

#include <memory>

namespace isthmus {

namespace asio = boost::asio;

// One io_context's guards, and the timer that checks them. An io_context is
// run by one thread (workers, directory loops), so nothing here is locked.
class DeadlineWheel final : public asio::execution_context::service {
 public:
  using key_type = DeadlineWheel;
  static inline asio::execution_context::id id;

  explicit DeadlineWheel(asio::execution_context& context) : service(context) {}

  static DeadlineWheel& of(const asio::any_io_executor& executor) {
    return asio::use_service<DeadlineWheel>(asio::query(executor, asio::execution::context));
  }

  void add(DeadlineGuard* guard, const asio::any_io_executor& executor) {
    guard->position_ = guards_.insert(guards_.end(), guard);
    guard->registered_ = true;
    guard->wheel_ = this;
    if (!timer_ && !shut_down_) timer_ = std::make_unique<asio::steady_timer>(executor);
    arm();
  }

  void remove(DeadlineGuard* guard) {
    if (guard->registered_) guards_.erase(guard->position_);
    guard->registered_ = false;
  }

 private:
  static constexpr auto kTick = std::chrono::milliseconds(50);

  // The io_context is going away: pending operations (and the coroutine
  // frames holding guards) are destroyed after this, possibly elsewhere.
  void shutdown() override {
    shut_down_ = true;
    for (DeadlineGuard* guard : guards_) guard->registered_ = false;
    guards_.clear();
    timer_.reset();
  }

  // The timer runs only while a guard waits, so an idle io_context has
  // nothing pending and can finish at shutdown.
  void arm() {
    if (armed_ || guards_.empty() || !timer_) return;
    armed_ = true;
    timer_->expires_after(kTick);
    timer_->async_wait([this](const boost::system::error_code& ec) {
      armed_ = false;
      if (!ec) tick();
    });
  }

  void tick() {
    const auto now = Clock::now();
    for (auto it = guards_.begin(); it != guards_.end();) {
      DeadlineGuard* guard = *it;
      if (guard->when_ > now) {
        ++it;
        continue;
      }
      it = guards_.erase(it);
      guard->registered_ = false;
      guard->fired_ = true;
      // Cancelling an operation posts its completion; nothing runs here.
      guard->signal_.emit(asio::cancellation_type::terminal);
    }
    arm();
  }

  std::list<DeadlineGuard*> guards_;
  std::unique_ptr<asio::steady_timer> timer_;
  bool armed_ = false;
  bool shut_down_ = false;
};

DeadlineGuard::DeadlineGuard(const asio::any_io_executor& executor, Deadline deadline)
    : when_(deadline.when()) {
  DeadlineWheel::of(executor).add(this, executor);
}

DeadlineGuard::~DeadlineGuard() {
  if (registered_) wheel_->remove(this);
}

}  // namespace isthmus
