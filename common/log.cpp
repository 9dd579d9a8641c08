#include "common/log.hpp"

#include <fmt/format.h>
#include <mutex>
#include <vector>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace isthmus {

std::string sanitize(std::string_view remote, std::size_t max_len) {
  std::string out;
  out.reserve(std::min(remote.size(), max_len) + 3);
  std::size_t taken = 0;
  for (char c : remote) {
    if (taken == max_len) {
      out += "...";
      break;
    }
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && u != '\\') {
      out += c;
    } else {
      fmt::format_to(std::back_inserter(out), "\\x{:02x}", u);
    }
    ++taken;
  }
  return out;
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (!stream || !*stream) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return fmt::format("{}:{}", st.st_dev, st.st_ino) == stream;
}

std::vector<std::pair<std::string, std::string>> journal_fields(std::string_view line) {
  static constexpr std::pair<std::string_view, std::string_view> kKeys[] = {
      {"session=", "SESSION"}, {"user=", "USER"}, {"island=", "ISLAND"}, {"node=", "NODE"}};
  std::vector<std::pair<std::string, std::string>> fields;
  std::size_t at = 0;
  while (at < line.size()) {
    auto end = line.find(' ', at);
    if (end == std::string_view::npos) end = line.size();
    auto word = line.substr(at, end - at);
    at = end + 1;
    for (auto [key, field] : kKeys) {
      if (word.size() <= key.size() || word.substr(0, key.size()) != key) continue;
      auto value = word.substr(key.size());
      while (!value.empty() && (value.back() == ':' || value.back() == ',' || value.back() == ';'))
        value.remove_suffix(1);
      bool seen = false;
      for (const auto& f : fields) seen |= f.first == field;
      if (!value.empty() && !seen) fields.emplace_back(field, value);
    }
  }
  return fields;
}

std::string journal_datagram(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [name, value] : fields) {
    out += name;
    if (value.find('\n') == std::string::npos) {
      out += '=';
      out += value;
    } else {
      // Binary-safe form: the name, a newline, the length as 64-bit little
      // endian, the value.
      out += '\n';
      auto n = static_cast<std::uint64_t>(value.size());
      for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
      out += value;
    }
    out += '\n';
  }
  return out;
}

namespace {

int journal_priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug: return 7;
    case spdlog::level::info: return 6;
    case spdlog::level::warn: return 4;
    case spdlog::level::err: return 3;
    case spdlog::level::critical: return 2;
    default: return 6;
  }
}

class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournalSink(const std::string& path) {
    if (path.size() >= sizeof(address_.sun_path))
      throw std::runtime_error("journal socket path too long: " + path);
    address_.sun_family = AF_UNIX;
    std::memcpy(address_.sun_path, path.c_str(), path.size() + 1);
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error(fmt::format("journal socket: {}", std::strerror(errno)));
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&address_), sizeof(address_)) != 0) {
      auto why = std::strerror(errno);
      ::close(fd_);
      throw std::runtime_error(fmt::format("cannot reach the journal at {}: {}", path, why));
    }
  }
  ~JournalSink() override { ::close(fd_); }
  JournalSink(const JournalSink&) = delete;
  JournalSink& operator=(const JournalSink&) = delete;

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string_view text(msg.payload.data(), msg.payload.size());
    std::vector<std::pair<std::string, std::string>> fields;
    fields.emplace_back("MESSAGE", std::string(text));
    fields.emplace_back("PRIORITY", std::to_string(journal_priority(msg.level)));
    fields.emplace_back("SYSLOG_IDENTIFIER", "isthmus");
    for (auto& field : journal_fields(text)) fields.push_back(std::move(field));
    auto datagram = journal_datagram(fields);
    if (::send(fd_, datagram.data(), datagram.size(), MSG_NOSIGNAL) >= 0) return;
    if ((errno == EMSGSIZE || errno == ENOBUFS) && send_as_memfd(datagram)) return;
    // The journal is gone (restarting?): the line is not lost.
    fmt::print(stderr, "<{}>{}\n", journal_priority(msg.level), text);
  }
  void flush_() override {}

 private:
  // Too big for one datagram: the journal takes a sealed memfd instead.
  bool send_as_memfd(const std::string& datagram) {
    int memfd = ::memfd_create("isthmus-journal", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0) return false;
    bool sent = false;
    if (::write(memfd, datagram.data(), datagram.size()) ==
            static_cast<ssize_t>(datagram.size()) &&
        ::fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) == 0) {
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
      msghdr message{};
      message.msg_control = control;
      message.msg_controllen = sizeof(control);
      cmsghdr* header = CMSG_FIRSTHDR(&message);
      header->cmsg_level = SOL_SOCKET;
      header->cmsg_type = SCM_RIGHTS;
      header->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(header), &memfd, sizeof(int));
      sent = ::sendmsg(fd_, &message, MSG_NOSIGNAL) >= 0;
    }
    ::close(memfd);
    return sent;
  }

  sockaddr_un address_{};
  int fd_ = -1;
};

}  // namespace

std::shared_ptr<spdlog::sinks::sink> make_journal_sink(const std::string& socket_path) {
  return std::make_shared<JournalSink>(socket_path);
}

void setup_logging(const LogSettings& settings) {
  std::shared_ptr<spdlog::logger> logger;
  if (!settings.file.empty()) {
    logger = std::make_shared<spdlog::logger>(
        "isthmus", std::make_shared<spdlog::sinks::basic_file_sink_mt>(settings.file));
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  } else if (stderr_is_journal()) {
    std::shared_ptr<spdlog::sinks::sink> sink;
    try {
      sink = make_journal_sink();
    } catch (const std::exception&) {
      // No native socket (journald not running?): stderr still reaches it.
      sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    }
    logger = std::make_shared<spdlog::logger>("isthmus", std::move(sink));
    // The journal stamps time and priority itself.
    logger->set_pattern("%v");
  } else {
    logger = std::make_shared<spdlog::logger>(
        "isthmus", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  }
  logger->set_level(settings.level);
  logger->flush_on(spdlog::level::trace);
  // spdlog::info() and friends use the default logger through a raw
  // pointer: a thread logging while it is replaced (a directory's or the
  // health checker's thread, started before the config's log settings are
  // applied) would use a destroyed logger. Replaced loggers are therefore
  // kept for the life of the process (a handful at most: one per start or
  // --check-config, never per reload).
  static std::mutex mutex;
  static std::vector<std::shared_ptr<spdlog::logger>> retired;
  std::lock_guard lock(mutex);
  if (auto old = spdlog::default_logger()) retired.push_back(std::move(old));
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace isthmus
