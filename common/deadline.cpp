#include "common/deadline.hpp"

#include <memory>

namespace isthmus {

// The calling thread's guards, and the timer that checks them. Workers each
// run one io_context on one thread, so everything here is single-threaded.
class DeadlineWheel {
 public:
  static DeadlineWheel& local() {
    thread_local DeadlineWheel wheel;
    return wheel;
  }

  void add(DeadlineGuard* guard, const boost::asio::any_io_executor& executor) {
    guard->position_ = guards_.insert(guards_.end(), guard);
    guard->registered_ = true;
    if (!timer_) timer_ = std::make_unique<boost::asio::steady_timer>(executor);
    arm();
  }

  void remove(DeadlineGuard* guard) {
    if (guard->registered_) guards_.erase(guard->position_);
    guard->registered_ = false;
  }

 private:
  static constexpr auto kTick = std::chrono::milliseconds(50);

  // The timer runs only while a guard waits, so an idle worker's
  // io_context has nothing pending and can finish at shutdown.
  void arm() {
    if (armed_ || guards_.empty()) return;
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
      guard->signal_.emit(boost::asio::cancellation_type::terminal);
    }
    arm();
  }

  std::list<DeadlineGuard*> guards_;
  std::unique_ptr<boost::asio::steady_timer> timer_;
  bool armed_ = false;
};

DeadlineGuard::DeadlineGuard(const boost::asio::any_io_executor& executor, Deadline deadline)
    : when_(deadline.when()) {
  DeadlineWheel::local().add(this, executor);
}

DeadlineGuard::~DeadlineGuard() { DeadlineWheel::local().remove(this); }

}  // namespace isthmus
