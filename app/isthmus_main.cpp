// isthmus: the director. A thin main: parse the command line, then hand over
// to app::run (or just validate the config with --check-config).

#include "app/application.hpp"
#include "config/config.hpp"

#include <CLI/CLI.hpp>

#include <iostream>

int main(int argc, char** argv) {
  CLI::App cli{"Isthmus: an island-sharding IMAP/POP3/LMTP director"};
  std::string config_file;
  std::string check_file;
  auto* run_opt = cli.add_option("-c,--config", config_file, "Run with this config file")
                      ->check(CLI::ExistingFile);
  auto* check_opt =
      cli.add_option("--check-config", check_file, "Validate a config file (and its static "
                                                   "directory), print what is wrong, and exit");
  run_opt->excludes(check_opt);
  cli.set_version_flag("--version", "isthmus 0.1.0");
  try {
    cli.parse(argc, argv);
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
