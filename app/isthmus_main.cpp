// isthmus: the director. A thin main: parse the command line, then hand over
// to app::run (or just validate the config with --check-config).
//
// The --help text is also the OPTIONS section of isthmus(8)
// (docs/man/isthmus.8.md); a test keeps the two the same.

#include "app/application.hpp"
#include "config/config.hpp"

#include <CLI/CLI.hpp>

#include <iostream>

int main(int argc, char** argv) {
  CLI::App cli{"Isthmus: an island-sharding IMAP/POP3/LMTP director"};
  std::string config_file;
  std::string check_file;
  cli.add_option("-c,--config", config_file,
                 "Run with this config file (the package's is /etc/isthmus/isthmus.json)")
      ->type_name("FILE")
      ->check(CLI::Validator(CLI::ExistingFile).description(""));
  cli.add_option("--check-config", check_file,
                 "Validate a config file (and its static directory), print what is wrong, and exit")
      ->type_name("FILE");
  cli.set_version_flag("--version", "isthmus 0.1.0", "Print the version and exit");
  cli.set_help_flag("-h,--help", "Print this help and exit");
  cli.footer(
      "Signals: SIGHUP reloads the config, SIGTERM and SIGINT stop gracefully.\n"
      "Under systemd (Type=notify) it reports readiness and logs to the journal.\n"
      "See isthmus(8) and isthmus.json(5).");
  try {
    cli.parse(argc, argv);
    if (!config_file.empty() && !check_file.empty())
      throw CLI::ExcludesError("--config", "--check-config");
  } catch (const CLI::ParseError& e) {
    return cli.exit(e) == 0 ? 0 : 2;  // --help and --version exit 0
  }

  if (!check_file.empty()) {
    try {
      auto runtime = isthmus::app::build_runtime(check_file, nullptr, false);
      std::cout << check_file << ": ok (" << runtime->config->listeners.size() << " listeners, "
                << runtime->config->islands.size() << " islands)\n";
      return 0;
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      return 1;
    }
  }
  if (config_file.empty()) {
    std::cerr << "isthmus: --config FILE is required (see --help)\n";
    return 2;
  }
  return isthmus::app::run(config_file);
}
