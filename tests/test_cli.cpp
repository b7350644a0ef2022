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

// The README's first command: the shipped model, greedy, gives the text transformers gives
// (models/README.md, "Samples") token for token.
TEST(Cli, DefaultModelContinuesAPromptAsTransformersDoes) {
  CommandResult r = run_trident(std::string("generate --model ") + TRIDENT_MODELS_DIR +
                                "/trident-tiny --prompt 'It is a truth universally acknowledged' "
                                "--max-new-tokens 32");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("It is a truth universally acknowledged, and she is very much attached "
                          "to her. She is a very good sort of thing, and she is very much "
                          "attached to her. She is a very"),
            std::string::npos)
      << r.output;
}

TEST(Cli, EvalPrintsPerplexityAsJson) {
  CommandResult r = run_trident(std::string("eval --model ") + TRIDENT_MODELS_DIR +
                                "/trident-tiny --text " + TRIDENT_TEST_DATA +
                                "/heldout/austen-test.txt --max-windows 1 --window 64 --json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("\"perplexity\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"tokens\": 64"), std::string::npos) << r.output;
}

TEST(Cli, EvalNamesAMissingTextFile) {
  CommandResult r = run_trident(std::string("eval --model ") + TRIDENT_MODELS_DIR +
                                "/trident-tiny --text /nonexistent/text.txt");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("/nonexistent/text.txt"), std::string::npos) << r.output;
}
