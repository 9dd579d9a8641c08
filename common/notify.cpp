#include "common/notify.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace isthmus::notify {

bool send(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || !*path) return false;
  std::string_view where(path);
  // A path, or an abstract socket ('@' stands for the leading NUL).
  if ((where.front() != '/' && where.front() != '@') || where.size() >= sizeof(sockaddr_un::sun_path))
    return false;
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, where.data(), where.size());
  if (where.front() == '@') address.sun_path[0] = '\0';
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + where.size());
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  auto sent = ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL,
                       reinterpret_cast<const sockaddr*>(&address), length);
  ::close(fd);
  return sent == static_cast<ssize_t>(state.size());
}

std::string one_line(std::string_view text, std::size_t max_len) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max_len) {
      out += "...";
      break;
    }
    out += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return out;
}

bool ready(std::string_view status) {
  return send(fmt::format("READY=1\nSTATUS={}\nMAINPID={}", one_line(status), ::getpid()));
}

bool reloading() {
  // MONOTONIC_USEC lets a systemd that knows Type=notify-reload (253+) tell
  // this reload from an earlier one; older ones ignore it.
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  auto usec = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
  return send(fmt::format("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC={}", usec));
}

bool stopping(std::string_view status) {
  return send(fmt::format("STOPPING=1\nSTATUS={}", one_line(status)));
}

bool status(std::string_view status) { return send(fmt::format("STATUS={}", one_line(status))); }

}  // namespace isthmus::notify
