// The journal sink and sd_notify against sockets of our own: what systemd
// would receive, byte for byte.
#include "common/log.hpp"
#include "common/notify.hpp"

#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace isthmus;

namespace {

// A bound datagram socket in a fresh temp dir, like journald's or systemd's.
struct Receiver {
  std::filesystem::path dir;
  std::string path;
  int fd = -1;
  Receiver() {
    char tmpl[] = "/tmp/isthmus-unit-XXXXXX";
    dir = ::mkdtemp(tmpl);
    path = (dir / "socket").string();
    fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0);
    timeval timeout{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  }
  ~Receiver() {
    ::close(fd);
    std::filesystem::remove_all(dir);
  }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;
  std::string receive() const {
    std::string buffer(65536, '\0');
    auto n = ::recv(fd, buffer.data(), buffer.size(), 0);
    REQUIRE(n >= 0);
    buffer.resize(static_cast<std::size_t>(n));
    return buffer;
  }
};

}  // namespace

TEST_CASE("journal: fields from our key=value log lines") {
  using Fields = std::vector<std::pair<std::string, std::string>>;
  CHECK(journal_fields("session=k3f9 login ok user=alice@example.org island=a node=a-left "
                       "client=127.0.0.1:4242 in 12ms") ==
        Fields{{"SESSION", "k3f9"}, {"USER", "alice@example.org"}, {"ISLAND", "a"},
               {"NODE", "a-left"}});
  // A value ends at a space; trailing punctuation of the sentence is not part of it.
  CHECK(journal_fields("session=s1 login user=bob island=b node=b-right: refused (x); next") ==
        Fields{{"SESSION", "s1"}, {"USER", "bob"}, {"ISLAND", "b"}, {"NODE", "b-right"}});
  // Only the first of a key counts, empty values and look-alikes do not.
  CHECK(journal_fields("session=a session=b user= xnode=n island=") == Fields{{"SESSION", "a"}});
  CHECK(journal_fields("reload: config generation 2 is live").empty());
}

TEST_CASE("journal: the native protocol, with the binary form for multi-line values") {
  CHECK(journal_datagram({{"MESSAGE", "hello"}, {"PRIORITY", "6"}}) == "MESSAGE=hello\nPRIORITY=6\n");
  std::string two_lines = "a\nb";
  std::string expected = std::string("MESSAGE\n") + std::string("\x03\0\0\0\0\0\0\0", 8) + "a\nb\n";
  CHECK(journal_datagram({{"MESSAGE", two_lines}}) == expected);
}

TEST_CASE("journal: a line logged through the sink arrives as one datagram with its fields") {
  Receiver journal;
  auto logger = std::make_shared<spdlog::logger>("t", make_journal_sink(journal.path));
  logger->warn("session={} login failed user={} island={} node={}: wrong password", "s9",
               "carol@example.org", "a", "a-right");
  auto datagram = journal.receive();
  CHECK(datagram ==
        "MESSAGE=session=s9 login failed user=carol@example.org island=a node=a-right: wrong "
        "password\nPRIORITY=4\nSYSLOG_IDENTIFIER=isthmus\nSESSION=s9\nUSER=carol@example.org\n"
        "ISLAND=a\nNODE=a-right\n");
  // Bigger than a datagram may be: sent as a sealed memfd instead, not lost.
  // (The receiving end gets a file descriptor, so recv() sees no bytes.)
  logger->info("{}", std::string(300000, 'x'));
  CHECK(journal.receive().empty());
  CHECK_THROWS(make_journal_sink(journal.path + ".missing"));
}

TEST_CASE("journal: used only when $JOURNAL_STREAM names our standard error") {
  struct stat st {};
  REQUIRE(::fstat(STDERR_FILENO, &st) == 0);
  auto ours = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  ::setenv("JOURNAL_STREAM", ours.c_str(), 1);
  CHECK(stderr_is_journal());
  ::setenv("JOURNAL_STREAM", (ours + "1").c_str(), 1);  // stderr redirected elsewhere
  CHECK_FALSE(stderr_is_journal());
  ::unsetenv("JOURNAL_STREAM");
  CHECK_FALSE(stderr_is_journal());
}

TEST_CASE("sd_notify: the states, to $NOTIFY_SOCKET only") {
  ::unsetenv("NOTIFY_SOCKET");
  CHECK_FALSE(notify::ready("x"));
  Receiver systemd;
  ::setenv("NOTIFY_SOCKET", systemd.path.c_str(), 1);
  CHECK(notify::ready("serving\nnow"));
  CHECK(systemd.receive() ==
        "READY=1\nSTATUS=serving now\nMAINPID=" + std::to_string(::getpid()));
  CHECK(notify::reloading());
  auto reloading = systemd.receive();
  CHECK(reloading.rfind("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=", 0) == 0);
  CHECK(notify::stopping("stopping"));
  CHECK(systemd.receive() == "STOPPING=1\nSTATUS=stopping");
  ::setenv("NOTIFY_SOCKET", "relative/path", 1);  // neither a path nor an abstract name
  CHECK_FALSE(notify::status("x"));
  ::unsetenv("NOTIFY_SOCKET");
}
