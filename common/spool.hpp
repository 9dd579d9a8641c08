#pragma once
// A message being relayed: kept in memory while small, moved to an
// unlinked temporary file (O_TMPFILE: nothing is left behind if the process
// dies) once it grows past a threshold, so large messages stay out of
// memory. Written once, then read from the start by each island's sender.
//
// The file is written and read with plain system calls on the worker
// thread. They go to the page cache and return in microseconds; an operator
// who puts spool_dir on a slow network filesystem will notice.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace isthmus {

class MessageSpool {
 public:
  MessageSpool(std::filesystem::path dir, std::size_t memory_limit)
      : dir_(std::move(dir)), memory_limit_(memory_limit) {}
  ~MessageSpool();
  MessageSpool(const MessageSpool&) = delete;
  MessageSpool& operator=(const MessageSpool&) = delete;

  // Appends; false (with `error` set) if the temporary file cannot be
  // created or written.
  bool append(std::string_view bytes, std::string& error);
  std::uint64_t size() const { return size_; }
  bool on_disk() const { return fd_ >= 0; }

  // Up to `max` bytes from `offset` into `out` (replacing its contents);
  // false on a read error.
  bool read(std::uint64_t offset, std::size_t max, std::string& out) const;

  // Empties the spool (closing the file) for the next message.
  void clear();

 private:
  bool move_to_disk(std::string& error);

  std::filesystem::path dir_;
  std::size_t memory_limit_;
  std::string memory_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

}  // namespace isthmus
