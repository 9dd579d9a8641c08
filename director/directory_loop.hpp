#pragma once
// Network directories (LDAP, SQL) run on a thread of their own: one
// io_context drives their sockets, timers and reconnects. A worker hands a
// lookup over with co_spawn and resumes on its own thread when the answer
// is there; it never blocks on a directory server, and a slow directory
// never stalls a worker's other sessions.

#include "director/directory.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <string>
#include <thread>

namespace isthmus::director {

class DirectoryLoop {
 public:
  // `name` becomes the thread's name (at most 15 characters show in ps/top).
  explicit DirectoryLoop(std::string name);
  ~DirectoryLoop();
  DirectoryLoop(const DirectoryLoop&) = delete;
  DirectoryLoop& operator=(const DirectoryLoop&) = delete;

  boost::asio::io_context& context() { return io_; }
  boost::asio::any_io_executor executor() { return io_.get_executor(); }
  bool in_loop_thread() const { return std::this_thread::get_id() == thread_.get_id(); }

  // Stops the loop and joins its thread; pending coroutines are destroyed
  // with the io_context, never resumed. Idempotent. Never from the loop.
  void stop();

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::thread thread_;
};

// Base of the directories that live on a DirectoryLoop.
//
// Lifetime: whoever awaits lookup() holds a shared_ptr to the directory
// (sessions through their Runtime snapshot), so it is never destroyed while
// a worker waits on it. A derived class's destructor must call stop_loop()
// first, so that none of its coroutines runs while its members go away.
class LoopDirectory : public Directory {
 public:
  boost::asio::awaitable<LookupResult> lookup(std::string user) final;
  boost::asio::awaitable<WriteResult> write_account(std::string user, UserEntry entry,
                                                    AccountChange change) final;

 protected:
  explicit LoopDirectory(std::string thread_name) : loop_(std::move(thread_name)) {}

  // Runs on the loop thread. Bounds itself by the directory's own timeout
  // and reports every failure as LookupStatus::unavailable; never throws.
  virtual boost::asio::awaitable<LookupResult> lookup_in_loop(std::string user) = 0;
  // Runs on the loop thread, bounded by the directory's timeout; never
  // throws. The default: no writes.
  virtual boost::asio::awaitable<WriteResult> write_in_loop(std::string user, UserEntry entry,
                                                            AccountChange change);

  DirectoryLoop& loop() { return loop_; }
  void stop_loop() { loop_.stop(); }

 private:
  DirectoryLoop loop_;
};

}  // namespace isthmus::director
