#include "common/spool.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

namespace isthmus {

MessageSpool::~MessageSpool() { clear(); }

void MessageSpool::clear() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  std::string().swap(memory_);
  size_ = 0;
}

bool MessageSpool::move_to_disk(std::string& error) {
  fd_ = ::open(dir_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd_ < 0) {
    error = fmt::format("cannot create a spool file in {}: {}", dir_.string(), std::strerror(errno));
    return false;
  }
  std::string_view pending = memory_;
  while (!pending.empty()) {
    ssize_t n = ::write(fd_, pending.data(), pending.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = fmt::format("cannot write the spool file: {}", std::strerror(errno));
      return false;
    }
    pending.remove_prefix(static_cast<std::size_t>(n));
  }
  std::string().swap(memory_);
  return true;
}

bool MessageSpool::append(std::string_view bytes, std::string& error) {
  if (fd_ < 0 && memory_.size() + bytes.size() <= memory_limit_) {
    memory_.append(bytes);
    size_ += bytes.size();
    return true;
  }
  if (fd_ < 0 && !move_to_disk(error)) return false;
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      error = fmt::format("cannot write the spool file: {}", std::strerror(errno));
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
    size_ += static_cast<std::uint64_t>(n);
  }
  return true;
}

bool MessageSpool::read(std::uint64_t offset, std::size_t max, std::string& out) const {
  out.clear();
  if (offset >= size_) return true;
  std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(max, size_ - offset));
  if (fd_ < 0) {
    out.assign(memory_, static_cast<std::size_t>(offset), n);
    return true;
  }
  out.resize(n);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd_, out.data() + got, n - got, static_cast<off_t>(offset + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<std::size_t>(r);
  }
  return true;
}

}  // namespace isthmus
