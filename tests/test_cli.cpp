// The `trident` command's own behaviour: help, and clear messages for bad flags.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

struct CommandResult {
  int status;
  std::string output;  // stdout and stderr together
};

CommandResult run_trident(const std::string& args) {
  std::string cmd = std::string(TRIDENT_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CommandResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  r.status = pclose(p);
  return r;
}

}  // namespace

TEST(Cli, EveryCommandHasHelp) {
  CommandResult top = run_trident("--help");
  EXPECT_EQ(top.status, 0);
  EXPECT_NE(top.output.find("generate"), std::string::npos);
  CommandResult gen = run_trident("generate --help");
  EXPECT_EQ(gen.status, 0);
  EXPECT_NE(gen.output.find("--max-new-tokens"), std::string::npos);
}

TEST(Cli, UnknownFlagIsNamed) {
  CommandResult r = run_trident("generate --model . --prompt hi --frobnicate 3");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("frobnicate"), std::string::npos) << r.output;
}

TEST(Cli, MissingModelDirectoryIsNamed) {
  CommandResult r = run_trident("generate --model /nonexistent/model --prompt hi");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("/nonexistent/model"), std::string::npos) << r.output;
}

TEST(Cli, OutOfRangeValuesAreRefused) {
  CommandResult r = run_trident("generate --model . --prompt hi --top-p 1.5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("top-p"), std::string::npos) << r.output;
  CommandResult n = run_trident("generate --model . --prompt hi --max-new-tokens 0");
  EXPECT_NE(n.status, 0);
  EXPECT_NE(n.output.find("max-new-tokens"), std::string::npos) << n.output;
}

TEST(Cli, ADirectoryWithoutAModelSaysWhatIsMissing) {
  CommandResult r = run_trident("generate --model /tmp --prompt hi");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("error:"), std::string::npos) << r.output;
}
