// `pac-concurrency import --pipelineruns prs.json [--repositories r.yaml]`:
// rebuilds running sets and queues from a cluster's PipelineRuns (the
// Pipelines-as-Code annotations) and its Repository manifests.
#include <cstdio>

#include "src/cli/cli.h"
#include "src/common/escape.h"
#include "src/common/strings.h"

namespace pac::concurrency::cli {

using internal::Cat;

namespace {

int Import(const GlobalOptions& g, const std::string& prs,
           const std::string& repos) {
  if (prs.empty() && repos.empty()) {
    return Fail(absl::InvalidArgumentError(
        "give --pipelineruns (kubectl get pipelineruns -A -o json) and/or "
        "--repositories (kubectl get repositories -A -o yaml)"));
  }
  Json body = Json::object();
  if (!prs.empty()) {
    auto text = ReadFile(prs, "--pipelineruns");
    if (!text.ok()) return Fail(text.status());
    auto doc = server::ParseJson(*text, "--pipelineruns");
    if (!doc.ok()) {
      return Fail(absl::InvalidArgumentError(
          Cat(doc.status().message(),
              " (use kubectl get pipelineruns -A -o json)")));
    }
    body["pipelineruns"] = *std::move(doc);
  }
  if (!repos.empty()) {
    auto text = ReadFile(repos, "--repositories");
    if (!text.ok()) return Fail(text.status());
    if (size_t bad = 0; !internal::IsValidUtf8(*text, &bad)) {
      return Fail(absl::InvalidArgumentError(Cat(
          "--repositories: byte ", bad, " is not valid UTF-8 (",
          internal::EscapeBytes(std::string_view(*text).substr(bad, 1)), ")")));
    }
    body["repositories"] = *text;
  }
  auto ctx = CommandContext(g, absl::Minutes(5));
  if (!ctx.ok()) return Fail(ctx.status());
  auto api = OpenApi(g);
  if (!api.ok()) return Fail(api.status());
  auto r = (*api)->api->Import(*ctx, body);
  if (!r.ok()) return Fail(r.status());
  Print(g, *r, [](const Json& d) {
    std::printf(
        "repositories %zu, running %zu, queued %zu, admitted %zu, "
        "skipped %zu\n",
        d["repositories"].size(), d["running"].size(), d["queued"].size(),
        d["admitted"].size(), d["skipped"].size());
    for (const Json& q : d["queued"]) {
      std::printf("  queued   %s #%lld\n",
                  q["pipeline_run"].get<std::string>().c_str(),
                  static_cast<long long>(q["position"].get<int64_t>()));
    }
    for (const Json& s : d["skipped"]) {
      std::printf("  skipped  %s: %s\n",
                  s["pipeline_run"].get<std::string>().c_str(),
                  s["reason"].get<std::string>().c_str());
    }
  });
  return kExitOk;
}

}  // namespace

void RegisterImportCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto prs = std::make_shared<std::string>();
  auto repos = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "import",
      "Rebuild queues from kubectl output (Pipelines-as-Code "
      "annotations) and Repository manifests");
  cmd->add_option("--pipelineruns", *prs,
                  "Output of kubectl get pipelineruns -A -o json");
  cmd->add_option("--repositories", *repos,
                  "Repository manifests (kubectl get repositories -A -o yaml)");
  cmd->callback([&g, prs, repos, run] {
    *run = [&g, prs, repos] { return Import(g, *prs, *repos); };
  });
}

}  // namespace pac::concurrency::cli
