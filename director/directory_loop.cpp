#include "director/directory_loop.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <pthread.h>

namespace isthmus::director {

namespace asio = boost::asio;

DirectoryLoop::DirectoryLoop(std::string name) : work_(io_.get_executor()) {
  thread_ = std::thread([this, name = std::move(name)] {
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // A bug in a directory must not take the thread down with it.
        spdlog::error("directory thread {}: unexpected exception: {}", name, e.what());
      }
    }
  });
}

DirectoryLoop::~DirectoryLoop() { stop(); }

void DirectoryLoop::stop() {
  if (!thread_.joinable()) return;
  work_.reset();
  io_.stop();
  if (in_loop_thread()) {
    thread_.detach();  // cannot join itself; the thread ends after this handler
    return;
  }
  thread_.join();
}

asio::awaitable<WriteResult> LoopDirectory::write_account(std::string user, UserEntry entry,
                                                           AccountChange change) {
  try {
    co_return co_await asio::co_spawn(
        loop_.executor(), write_in_loop(std::move(user), std::move(entry), std::move(change)),
        asio::use_awaitable);
  } catch (const std::exception& e) {
    co_return WriteResult{WriteStatus::failed, std::string(kind()) + " directory: " + e.what()};
  }
}

asio::awaitable<WriteResult> LoopDirectory::write_in_loop(std::string user, UserEntry entry,
                                                          AccountChange change) {
  co_return co_await Directory::write_account(std::move(user), std::move(entry),
                                              std::move(change));
}

asio::awaitable<LookupResult> LoopDirectory::lookup(std::string user) {
  try {
    co_return co_await asio::co_spawn(loop_.executor(), lookup_in_loop(std::move(user)),
                                      asio::use_awaitable);
  } catch (const std::exception& e) {
    co_return unavailable_result(std::string(kind()) + " directory: " + e.what());
  }
}

}  // namespace isthmus::director
