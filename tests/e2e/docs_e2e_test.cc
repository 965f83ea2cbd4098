// The shell examples of README.md and docs/*.md, run as written against a
// real `pac-concurrency serve`, so that the documentation cannot rot.
//
// A fenced ```sh block preceded by the line `<!-- doc-test -->` is run, in
// one bash process per block, from the source directory, against a fresh
// memory server on a free port (`http://127.0.0.1:8080` and
// `./build/pac-concurrency` in the text become that server and the binary
// under test; PAC_SERVER points at it; PAC_POSTGRESQL_* at the test
// PostgreSQL server when one is up). In a block:
//   * a line that is not a comment is a command (`\` continues it);
//   * `# ` lines right after a command are its expected output (stdout and
//     stderr), matched in order; `…` stands for any text;
//   * a trailing `(HTTP 200)` on an expected line is a note for the reader,
//     `(exit N)` the exit status expected (else 0);
//   * a command ending in `&` runs in the background (its output to a
//     file), and is stopped when the block ends;
//   * `pac-concurrency` is the binary under test (its directory comes
//     first in PATH);
//   * other comments (after a blank line, or at the end of a command line)
//     are for the reader.
#include <sys/wait.h>

#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_process.h"

namespace pac::concurrency {
namespace {

struct Step {
  int line = 0;
  std::string command;
  std::vector<std::string> expected;
  int exit_code = 0;
  bool background = false;
};

struct Block {
  std::string file;
  int line = 0;
  std::vector<Step> steps;
};

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// The command without a trailing comment (whitespace, then "# ").
std::string WithoutTrailingComment(const std::string& command) {
  static const std::regex kComment(R"(\s+#\s.*$)");
  return Trim(std::regex_replace(command, kComment, ""));
}

// The marked blocks of the Markdown file at `path` (named `relative` in
// messages).
std::vector<Block> MarkedBlocks(const std::string& path,
                                const std::string& relative) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::vector<Block> blocks;
  static const std::regex kNote(
      R"((^|\s+)\((HTTP [0-9]+|exit ([0-9]+))\)\s*$)");
  for (size_t i = 0; i < lines.size(); ++i) {
    if (Trim(lines[i]) != "<!-- doc-test -->") continue;
    if (i + 1 >= lines.size() || lines[i + 1].rfind("```sh", 0) != 0) {
      ADD_FAILURE() << relative << ":" << i + 1
                    << ": <!-- doc-test --> is not followed by a ```sh block";
      continue;
    }
    Block b{relative, static_cast<int>(i + 2), {}};
    bool expecting = false;
    for (i += 2; i < lines.size() && lines[i].rfind("```", 0) != 0; ++i) {
      const std::string t = Trim(lines[i]);
      if (t.empty()) {
        expecting = false;
      } else if (t[0] == '#') {
        if (!expecting || b.steps.empty()) continue;
        std::string e = t.size() > 1 && t[1] == ' ' ? t.substr(2) : t.substr(1);
        std::smatch m;
        if (std::regex_search(e, m, kNote)) {
          if (m[3].matched) b.steps.back().exit_code = std::stoi(m[3].str());
          e = e.substr(0, m.position(0));
        }
        b.steps.back().expected.push_back(Trim(e));
      } else {
        Step s;
        s.line = static_cast<int>(i + 1);
        s.command = lines[i];
        while (!s.command.empty() && s.command.back() == '\\' &&
               i + 1 < lines.size()) {
          s.command += "\n" + lines[++i];
        }
        std::string bare = WithoutTrailingComment(s.command);
        if (bare.size() >= 2 && bare.back() == '&' &&
            bare[bare.size() - 2] != '&') {
          s.background = true;
          s.command = Trim(bare.substr(0, bare.size() - 1));
        }
        b.steps.push_back(std::move(s));
        expecting = true;
      }
    }
    blocks.push_back(std::move(b));
  }
  return blocks;
}

// Finds each "…"-separated part of `expected` in `out` from `*pos` on, in
// order; advances `*pos` past the match.
bool MatchLine(const std::string& out, const std::string& expected,
               size_t* pos) {
  size_t at = *pos;
  for (const std::string& p :
       std::vector<std::string>(absl::StrSplit(expected, "…"))) {
    if (p.empty()) continue;
    size_t found = out.find(p, at);
    if (found == std::string::npos) return false;
    at = found + p.size();
  }
  *pos = at;
  return true;
}

// Runs one block against `server` (the blocks of a file share one, so a
// walk-through may go on from one block to the next).
void RunBlock(const Block& b, const ServerProcess& server) {
  SCOPED_TRACE(absl::StrCat(b.file, ":", b.line));
  ASSERT_FALSE(b.steps.empty());
  const std::string dir = TempDir() + "/" + Unique("block");
  ASSERT_EQ(system(("mkdir -p " + dir).c_str()), 0);
  std::string script = "exec </dev/null 2>&1\ncd " PAC_SOURCE_DIR "\n";
  for (size_t i = 0; i < b.steps.size(); ++i) {
    const std::string c = absl::StrReplaceAll(
        b.steps[i].command, {{"http://127.0.0.1:8080", server.url()},
                             {"./build/pac-concurrency", Binary()}});
    if (b.steps[i].background) {
      absl::StrAppend(&script, c, " >", dir, "/bg", i, ".log 2>&1 &\n",
                      "printf '\\n@@step ", i, " 0@@\\n'\n");
    } else {
      absl::StrAppend(&script, c, "\nprintf '\\n@@step ", i, " %d@@\\n' $?\n");
    }
  }
  script += "kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; true\n";
  const std::string path = dir + "/block.sh";
  std::ofstream(path) << script;

  // `pac-concurrency` is the binary under test.
  std::string bin_dir = Binary();
  bin_dir.resize(bin_dir.rfind('/'));
  const char* path_env = std::getenv("PATH");
  std::vector<std::string> env{
      "PAC_SERVER=" + server.url(),
      "PATH=" + bin_dir + ":" +
          (path_env != nullptr ? path_env : "/usr/bin:/bin")};
  if (const char* port = std::getenv("PAC_TEST_PG_PORT"); port != nullptr) {
    auto get = [](const char* n) {
      const char* v = std::getenv(n);
      return std::string(v != nullptr ? v : "");
    };
    env.push_back("PAC_POSTGRESQL_HOST=" + get("PAC_TEST_PG_HOST"));
    env.push_back(absl::StrCat("PAC_POSTGRESQL_PORT=", port));
    env.push_back("PAC_POSTGRESQL_DATABASE=" + get("PAC_TEST_PG_DATABASE"));
    env.push_back("PAC_POSTGRESQL_USERNAME=" + get("PAC_TEST_PG_USER"));
    env.push_back("PAC_POSTGRESQL_PASSWORD_FILE=" +
                  get("PAC_TEST_PG_PASSWORD_FILE"));
  }
  std::string out;
  const int code =
      Finish(Spawn({"/usr/bin/timeout", "120", "/bin/bash", path}, env), &out);
  ASSERT_EQ(code, 0) << out;

  size_t from = 0;
  for (size_t i = 0; i < b.steps.size(); ++i) {
    const Step& s = b.steps[i];
    const std::string mark = absl::StrCat("\n@@step ", i, " ");
    size_t at = out.find(mark, from);
    ASSERT_NE(at, std::string::npos)
        << b.file << ":" << s.line << ": no end marker; output:\n"
        << out;
    const std::string chunk = out.substr(from, at - from);
    size_t end = out.find("@@\n", at + mark.size());
    ASSERT_NE(end, std::string::npos);
    const int status = std::stoi(out.substr(at + mark.size()));
    from = end + 3;
    EXPECT_EQ(status, s.exit_code)
        << b.file << ":" << s.line << ": " << s.command << "\nprinted:\n"
        << chunk;
    size_t pos = 0;
    for (const std::string& e : s.expected) {
      EXPECT_TRUE(MatchLine(chunk, e, &pos))
          << b.file << ":" << s.line << ": " << s.command
          << "\nexpected (… is any text):\n  " << e << "\nprinted:\n"
          << chunk;
    }
  }
}

class DocsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(DocsTest, MarkedShellBlocksRunAsWritten) {
  std::vector<Block> blocks =
      MarkedBlocks(std::string(PAC_SOURCE_DIR) + "/" + GetParam(), GetParam());
  ASSERT_FALSE(blocks.empty()) << GetParam() << " has no <!-- doc-test -->";
  ServerProcess server;
  ASSERT_FALSE(server.url().empty());
  for (const Block& b : blocks) RunBlock(b, server);
}

INSTANTIATE_TEST_SUITE_P(Docs, DocsTest,
                         ::testing::Values("README.md", "docs/cli.md",
                                           "docs/api.md", "docs/migration.md"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (!isalnum(static_cast<unsigned char>(c))) {
                               c = '_';
                             }
                           }
                           return n;
                         });

// The parser itself: expected lines, notes, background commands.
TEST(DocsParserTest, ReadsCommandsExpectedLinesAndNotes) {
  const std::string path = WriteFile(
      "parse.md",
      "text\n<!-- doc-test -->\n```sh\nURL=x   # a comment for the reader\n"
      "curl -s $URL \\\n  -d '{}'\n# {\"a\":1,…}   (HTTP 202)\n"
      "# second line\n\n# a reader's comment\nwatch x &   # bg\n"
      "false\n# (exit 1)\na && b\n```\n```sh\nnot run\n```\n");
  std::vector<Block> blocks = MarkedBlocks(path, "parse.md");
  ASSERT_EQ(blocks.size(), 1u);
  const auto& s = blocks[0].steps;
  ASSERT_EQ(s.size(), 5u);
  EXPECT_EQ(s[0].command, "URL=x   # a comment for the reader");
  EXPECT_TRUE(s[0].expected.empty());
  EXPECT_EQ(s[1].command, "curl -s $URL \\\n  -d '{}'");
  EXPECT_THAT(s[1].expected,
              ::testing::ElementsAre("{\"a\":1,…}", "second line"));
  EXPECT_EQ(s[1].exit_code, 0);
  EXPECT_TRUE(s[2].background);
  EXPECT_EQ(s[2].command, "watch x");
  EXPECT_EQ(s[3].exit_code, 1);
  EXPECT_FALSE(s[4].background);
  size_t pos = 0;
  EXPECT_TRUE(MatchLine("x {\"a\":1,\"b\":2}", "{\"a\":1,…}", &pos));
  pos = 0;
  EXPECT_FALSE(MatchLine("{\"b\":2,\"a\":1}", "{\"a\":1,…\"b\"", &pos));
}

}  // namespace
}  // namespace pac::concurrency
