// `pac-concurrency import --pipelineruns F|- [--repositories F|-]
// [--dry-run] [--progress] [--batch-size N]`: rebuilds running sets and
// queues from a cluster's PipelineRuns and Repository manifests
// (docs/migration.md). The export is read as a stream and trimmed
// (export_reader.h), planned here by Pipelines-as-Code's rules
// (import_plan.h), and sent in batches of planned runs, each one request
// the server applies idempotently, retried when the answer was lost.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <set>
#include <thread>

#include "pac/concurrency/status.h"
#include "src/cli/cli.h"
#include "src/common/escape.h"
#include "src/common/strings.h"
#include "src/server/export_reader.h"
#include "src/server/import_plan.h"
#include "src/server/manifests.h"

namespace pac::concurrency::cli {

using internal::Cat;
using server::ExportedRun;
using server::ImportPlan;
using server::RepositoryPlan;

namespace {

struct ImportFlags {
  std::string prs, repos;
  std::string global_repository;
  server::ImportLabels labels;  // --group-label, --priority-label
  bool dry_run = false;
  bool progress = false;
  int batch_size = 1000;
  int parallel = 4;
};

// A progress line on stderr, rewritten at most four times a second; on a
// terminal, or everywhere with --progress.
class Progress {
 public:
  explicit Progress(bool force) : on_(force || isatty(2) != 0) {}
  void Say(const std::string& line, bool last = false) {
    if (!on_) return;
    const absl::Time now = absl::Now();
    if (!last && now - shown_ < absl::Milliseconds(250)) return;
    shown_ = now;
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
    std::fflush(stderr);
  }

 private:
  const bool on_;
  absl::Time shown_ = absl::InfinitePast();
};

std::string Rate(double n, absl::Duration d) {
  const double s = std::max(absl::ToDoubleSeconds(d), 1e-3);
  return Cat(static_cast<int64_t>(n / s), "/s");
}

// The export's runs, read as a stream (into a deque: a vector's growth
// would hold two copies of it for a moment).
absl::StatusOr<std::deque<ExportedRun>> ReadRuns(
    const std::string& path, const server::ImportLabels& labels,
    Progress& progress) {
  std::ifstream file;
  std::istream* in = &std::cin;
  int64_t size = -1;
  if (path != "-") {
    file.open(path, std::ios::binary | std::ios::ate);
    if (!file) {
      return absl::InvalidArgumentError(
          Cat("--pipelineruns: cannot read file \"", path, "\""));
    }
    size = static_cast<int64_t>(file.tellg());
    file.seekg(0);
    in = &file;
  }
  std::deque<ExportedRun> runs;
  const absl::Time start = absl::Now();
  absl::Status s = server::ReadPipelineRunExport(
      *in, "--pipelineruns",
      [&](ExportedRun r) {
        runs.push_back(std::move(r));
        std::string line = Cat("reading: ", runs.size(), " runs");
        if (size > 0) {
          const int64_t at = static_cast<int64_t>(in->tellg());
          if (at > 0) absl::StrAppend(&line, ", ", at * 100 / size, "%");
        }
        progress.Say(Cat(line, ", ", Rate(runs.size(), absl::Now() - start)));
        return absl::OkStatus();
      },
      labels);
  if (!s.ok()) return s;
  progress.Say(Cat("read ", runs.size(), " runs in ",
                   absl::FormatDuration(absl::Trunc(absl::Now() - start,
                                                    absl::Milliseconds(1)))),
               true);
  return runs;
}

// One request, retried (twice, after 1 s and 2 s) when its answer may have
// been lost: every batch is idempotent.
absl::StatusOr<Json> Send(server::Api& api, const Context& overall,
                          const Json& body) {
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (attempt > 0) absl::SleepFor(absl::Seconds(attempt));
    if (absl::Status s = overall.Err(); !s.ok()) return s;
    Context ctx = Context::WithTimeout(overall, absl::Seconds(60));
    auto r = api.Import(ctx, body);
    if (r.ok()) return r;
    last = r.status();
    const bool lost = last.code() == absl::StatusCode::kUnavailable ||
                      (last.code() == absl::StatusCode::kDeadlineExceeded &&
                       overall.Err().ok());
    if (!lost) break;
  }
  return last;
}

// The limits the backend records for the repositories the runs name that
// no manifest gave.
absl::Status LookUpLimits(server::Api& api, const Context& ctx,
                          const std::deque<ExportedRun>& runs,
                          std::map<std::string, int32_t>& limits,
                          ImportCapacity* capacity) {
  std::set<std::string> wanted;
  for (const ExportedRun& r : runs) {
    const std::string repo = server::RepositoryOf(r);
    if (!repo.empty() && limits.count(repo) == 0 &&
        ValidateKey(repo, "repository").ok()) {
      wanted.insert(repo);
    }
  }
  std::vector<std::string> keys(wanted.begin(), wanted.end());
  // One request at least: its answer also tells the backend's batch
  // capacity.
  for (size_t i = 0; i == 0 || i < keys.size(); i += 10000) {
    Json part = Json::array();
    for (size_t j = i; j < std::min(keys.size(), i + 10000); ++j) {
      part.push_back(keys[j]);
    }
    auto r = Send(api, ctx, Json{{"limits_of", std::move(part)}});
    if (!r.ok()) return r.status();
    for (const auto& [k, v] : (*r)["limits"].items()) {
      limits[k] = v.get<int32_t>();
    }
    if (auto c = r->find("import_capacity"); c != r->end() && c->is_object()) {
      capacity->runs = c->value("runs", capacity->runs);
      capacity->per_repository =
          c->value("per_repository", capacity->per_repository);
    }
  }
  return absl::OkStatus();
}

// The plan, and per repository what the import would admit given what the
// backend holds now (one status read per repository).
absl::StatusOr<Json> DryRunReport(
    server::Api& api, const Context& ctx, const ImportPlan& plan,
    const std::map<std::string, int32_t>& from_manifests,
    const std::set<std::string>& from_global) {
  Json repos = Json::array();
  for (const RepositoryPlan& p : plan.repositories) {
    auto status = api.Status(ctx, p.repository);
    if (!status.ok()) return status.status();
    std::set<std::string> holding;
    for (const Json& l : (*status)["running"]) {
      holding.insert(l.value("pipeline_run", ""));
    }
    for (const std::string& a : p.adopt) holding.insert(a);
    Json queue = Json::array(), start = Json::array();
    size_t free = holding.size() < static_cast<size_t>(p.limit)
                      ? p.limit - holding.size()
                      : 0;
    for (const server::QueuedRun& q : p.queue) {
      queue.push_back(q.run);
      // Holding a slot from before: the controller must start it too.
      if (holding.count(q.run) != 0) {
        start.push_back(q.run);
      } else if (free > 0) {
        --free;
        start.push_back(q.run);
      }
    }
    repos.push_back(Json{
        {"repository", p.repository},
        {"concurrency_limit", p.limit},
        {"limit_from", from_global.count(p.repository) != 0
                           ? "global Repository"
                       : from_manifests.count(p.repository) != 0 ? "manifest"
                                                                 : "backend"},
        {"adopt", p.adopt},
        {"queue", std::move(queue)},
        {"start_now", std::move(start)}});
  }
  Json skipped = Json::array();
  for (const server::SkippedRun& s : plan.skipped) {
    skipped.push_back(Json{{"pipeline_run", s.run}, {"reason", s.reason}});
  }
  return Json{{"dry_run", true},
              {"repositories", std::move(repos)},
              {"skipped", std::move(skipped)},
              {"notes", plan.notes}};
}

void PrintDryRun(const Json& d) {
  for (const Json& r : d["repositories"]) {
    std::printf("%s (limit %d, from the %s)\n",
                r["repository"].get<std::string>().c_str(),
                r["concurrency_limit"].get<int>(),
                r["limit_from"].get<std::string>().c_str());
    for (const Json& a : r["adopt"]) {
      std::printf("  adopt      %s\n", a.get<std::string>().c_str());
    }
    auto in = [](const Json& list, const Json& v) {
      return std::find(list.begin(), list.end(), v) != list.end();
    };
    size_t i = 0;
    for (const Json& q : r["queue"]) {
      ++i;
      std::printf("  queue #%-3zu %s%s\n", i, q.get<std::string>().c_str(),
                  in(r["start_now"], q) ? "  (admitted: start it now)" : "");
    }
  }
  for (const Json& s : d["skipped"]) {
    std::printf("skipped %s: %s\n",
                s["pipeline_run"].get<std::string>().c_str(),
                s["reason"].get<std::string>().c_str());
  }
  for (const Json& n : d["notes"]) {
    std::printf("note: %s\n", n.get<std::string>().c_str());
  }
  std::printf("dry run: nothing written\n");
}

// The batches, made one at a time: repository plans cut so that no
// request costs more than `size`, each run 1 and each repository part
// `per_repo` (the backend's capacity; a long queue spans several, in
// order). A repository whose limit came from a manifest records it in its
// first part; manifests of repositories with no run to import come last,
// for their limits.
class Batches {
 public:
  // The repositories plan.repositories[i] for i in `repos`; with
  // `manifests`, also the limits of repositories with no run.
  Batches(const ImportPlan& plan,
          const std::map<std::string, int32_t>& from_manifests, size_t size,
          size_t per_repo, std::vector<size_t> repos, bool manifests)
      : plan_(plan),
        from_manifests_(from_manifests),
        size_(size),
        per_repo_(per_repo),
        repos_(std::move(repos)) {
    for (const RepositoryPlan& p : plan.repositories) {
      planned_.insert(p.repository);
    }
    manifest_ = manifests ? from_manifests_.begin() : from_manifests_.end();
  }

  // The next request body, or false when all are made.
  bool Next(Json* body) {
    Json cur = Json::array();
    size_t n = 0;
    while (n + per_repo_ < size_ && repo_ < repos_.size()) {
      const RepositoryPlan& p = plan_.repositories[repos_[repo_]];
      n += per_repo_;
      RepositoryPlan part;
      part.repository = p.repository;
      part.limit = p.limit;
      for (; a_ < p.adopt.size() && n < size_; ++a_, ++n) {
        part.adopt.push_back(p.adopt[a_]);
      }
      for (; q_ < p.queue.size() && n < size_; ++q_, ++n) {
        part.queue.push_back(p.queue[q_]);
      }
      cur.push_back(server::RepositoryPlanToJson(
          part, a_ + q_ == part.adopt.size() + part.queue.size() &&
                    from_manifests_.count(p.repository) != 0));
      if (a_ == p.adopt.size() && q_ == p.queue.size()) {
        ++repo_;
        a_ = q_ = 0;
      }
    }
    for (; n + std::max<size_t>(per_repo_, 1) <= size_ &&
           manifest_ != from_manifests_.end();
         ++manifest_) {
      const auto& [key, limit] = *manifest_;
      if (planned_.count(key) != 0 || limit <= 0) continue;
      RepositoryPlan part;
      part.repository = key;
      part.limit = limit;
      cur.push_back(server::RepositoryPlanToJson(part, true));
      n += std::max<size_t>(per_repo_, 1);
    }
    if (cur.empty()) return false;
    *body = Json{{"batch", std::move(cur)}};
    return true;
  }

 private:
  const ImportPlan& plan_;
  const std::map<std::string, int32_t>& from_manifests_;
  const size_t size_;
  const size_t per_repo_;
  const std::vector<size_t> repos_;
  std::set<std::string> planned_;
  size_t repo_ = 0, a_ = 0, q_ = 0;  // the next run to send
  std::map<std::string, int32_t>::const_iterator manifest_;
};

// What the import did, kept compact (a 100,000-run import answers 100,000
// queue places) and printed as a table or streamed as one JSON document.
struct Report {
  Json repositories = Json::array();
  std::vector<std::string> running, admitted;
  struct Queued {
    std::string run;
    server::PooledText repository;  // one copy per repository
    int64_t position;
  };
  std::vector<Queued> queued;

  // Takes in one batch's answer.
  void Add(const Json& r) {
    for (const Json& v : r["repositories"]) repositories.push_back(v);
    for (auto [key, list] :
         {std::pair{"running", &running}, std::pair{"admitted", &admitted}}) {
      for (const Json& v : r[key]) list->push_back(v.get<std::string>());
    }
    for (const Json& q : r["queued"]) {
      queued.push_back({q["pipeline_run"].get<std::string>(),
                        q["repository"].get<std::string>(),
                        q["position"].get<int64_t>()});
    }
  }

  void PrintJson(const ImportPlan& plan) const {
    auto strings = [](const char* key, const std::vector<std::string>& v) {
      std::printf("\"%s\":[", key);
      for (size_t i = 0; i < v.size(); ++i) {
        std::printf("%s%s", i == 0 ? "" : ",",
                    server::DumpSafe(Json(v[i])).c_str());
      }
      std::printf("],");
    };
    std::printf("{\"repositories\":%s,",
                server::DumpSafe(repositories).c_str());
    strings("running", running);
    strings("admitted", admitted);
    std::printf("\"queued\":[");
    for (size_t i = 0; i < queued.size(); ++i) {
      std::printf("%s%s", i == 0 ? "" : ",",
                  server::DumpSafe(Json{{"pipeline_run", queued[i].run},
                                        {"repository", queued[i].repository},
                                        {"position", queued[i].position}})
                      .c_str());
    }
    std::printf("],\"skipped\":[");
    for (size_t i = 0; i < plan.skipped.size(); ++i) {
      std::printf("%s%s", i == 0 ? "" : ",",
                  server::DumpSafe(Json{{"pipeline_run", plan.skipped[i].run},
                                        {"reason", plan.skipped[i].reason}})
                      .c_str());
    }
    std::printf("],\"notes\":%s}\n",
                server::DumpSafe(Json(plan.notes)).c_str());
  }

  void PrintTable(const ImportPlan& plan) const {
    std::printf(
        "repositories %zu, running %zu, admitted %zu (start them now), "
        "queued %zu, skipped %zu\n",
        repositories.size(), running.size(), admitted.size(), queued.size(),
        plan.skipped.size());
    for (const std::string& r : running) {
      std::printf("  running  %s\n", r.c_str());
    }
    for (const std::string& r : admitted) {
      std::printf("  admitted %s (start it now)\n", r.c_str());
    }
    for (const Queued& q : queued) {
      std::printf("  queued   %s #%lld\n", q.run.c_str(),
                  static_cast<long long>(q.position));
    }
    for (const server::SkippedRun& sk : plan.skipped) {
      std::printf("  skipped  %s: %s\n", sk.run.c_str(), sk.reason.c_str());
    }
    for (const std::string& n : plan.notes) {
      std::printf("  note     %s\n", n.c_str());
    }
  }
};

// An import that stopped part way: what was done stays, and the same
// command run again completes it.
int Stopped(const absl::Status& s, size_t done, size_t total) {
  std::fprintf(stderr,
               "import stopped after %zu of %zu runs; running it again "
               "completes it (every batch is idempotent)\n",
               done, total);
  return Fail(s);
}

int Import(const GlobalOptions& g, const ImportFlags& f) {
  if (f.prs.empty() && f.repos.empty()) {
    return Fail(absl::InvalidArgumentError(
        "give --pipelineruns (kubectl get pipelineruns -A -o json, or -o "
        "yaml; - for stdin) and/or --repositories (kubectl get repositories "
        "-A -o yaml)"));
  }
  if (f.prs == "-" && f.repos == "-") {
    return Fail(absl::InvalidArgumentError(
        "--pipelineruns and --repositories cannot both read stdin (-)"));
  }
  if (f.batch_size < 1 || f.batch_size > 5000) {
    return Fail(absl::InvalidArgumentError("--batch-size: 1 to 5000 runs"));
  }
  if (f.parallel < 1 || f.parallel > 16) {
    return Fail(absl::InvalidArgumentError("--parallel: 1 to 16"));
  }
  auto overall = CommandContext(g, absl::ZeroDuration());
  if (!overall.ok()) return Fail(overall.status());
  Progress progress(f.progress);
  std::map<std::string, int32_t> from_manifests;
  // The manifests' shared-limits annotations (docs/policies.md).
  std::vector<server::SharedLimitsNote> shared;
  std::vector<std::string> global_notes;
  std::set<std::string> from_global;  // limits lent by the global Repository
  if (!f.repos.empty()) {
    auto text = ReadFile(f.repos, "--repositories");
    if (!text.ok()) return Fail(text.status());
    if (size_t bad = 0; !internal::IsValidUtf8(*text, &bad)) {
      return Fail(absl::InvalidArgumentError(Cat(
          "--repositories: byte ", bad, " is not valid UTF-8 (",
          internal::EscapeBytes(std::string_view(*text).substr(bad, 1)), ")")));
    }
    auto repos = server::ParseRepositoryManifests(*text, &shared);
    if (!repos.ok()) return Fail(repos.status());
    std::set<std::string> unset;
    for (const Repository& r : *repos) {
      if (!r.concurrency_limit.has_value()) unset.insert(r.Key());
    }
    auto merged = server::MergeGlobalRepository(*repos, f.global_repository);
    if (!merged.ok()) return Fail(merged.status());
    global_notes = *std::move(merged);
    for (const Repository& r : *repos) {
      if (unset.count(r.Key()) != 0 && r.concurrency_limit.has_value()) {
        from_global.insert(r.Key());
      }
    }
    for (const Repository& r : *repos)
      from_manifests[r.Key()] = EffectiveLimit(r);
  }
  std::deque<ExportedRun> runs;
  if (!f.prs.empty()) {
    auto read = ReadRuns(f.prs, f.labels, progress);
    if (!read.ok()) return Fail(read.status());
    runs = *std::move(read);
  }
  auto api = OpenApi(g, *overall);
  if (!api.ok()) return Fail(api.status());
  std::map<std::string, int32_t> limits = from_manifests;
  ImportCapacity capacity{static_cast<size_t>(f.batch_size), 0};
  if (absl::Status s =
          LookUpLimits(*(*api)->api, *overall, runs, limits, &capacity);
      !s.ok()) {
    return Stopped(s, 0, runs.size());
  }
  std::vector<const ExportedRun*> ptrs;
  ptrs.reserve(runs.size());
  for (const ExportedRun& r : runs) ptrs.push_back(&r);
  ImportPlan plan = server::PlanImport(ptrs, limits);
  plan.notes.insert(plan.notes.begin(), global_notes.begin(),
                    global_notes.end());
  ptrs = {};
  runs = {};
  if (f.dry_run) {
    auto d =
        DryRunReport(*(*api)->api, *overall, plan, from_manifests, from_global);
    if (!d.ok()) return Fail(d.status());
    Print(g, *d, PrintDryRun);
    return kExitOk;
  }
  // Memberships of shared limits before any run: the admissions count
  // against them.
  for (const server::SharedLimitsNote& note : shared) {
    auto p = (*api)->api->SetPolicy(*overall, note.repository_key,
                                    Json{{"shared_limits", note.names}});
    if (!p.ok()) return Stopped(p.status(), 0, plan.runs());
  }
  // Lanes: each sends the batches of its share of the repositories one
  // after another (a repository's runs stay in order), the lanes at once.
  Report report;
  const size_t total = plan.runs();
  const size_t lanes = std::max<size_t>(
      1, std::min<size_t>(f.parallel, plan.repositories.size()));
  std::mutex mu;
  size_t done = 0;
  absl::Status failed;
  const absl::Time start = absl::Now();
  auto lane = [&](size_t l) {
    std::vector<size_t> mine;
    for (size_t i = l; i < plan.repositories.size(); i += lanes) {
      mine.push_back(i);
    }
    Batches batches(plan, from_manifests,
                    std::min(static_cast<size_t>(f.batch_size), capacity.runs),
                    capacity.per_repository, std::move(mine),
                    /*manifests=*/l == 0);
    Json batch;
    while (batches.Next(&batch)) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.ok()) return;
      }
      auto r = Send(*(*api)->api, *overall, batch);
      size_t runs = 0;
      for (const Json& p : batch["batch"]) {
        runs += p["adopt"].size() + p["queue"].size();
      }
      std::lock_guard<std::mutex> lock(mu);
      if (!r.ok()) {
        if (failed.ok()) failed = r.status();
        return;
      }
      report.Add(*r);
      done += runs;
      const absl::Duration took = absl::Now() - start;
      const double per_s = done / std::max(absl::ToDoubleSeconds(took), 1e-3);
      progress.Say(Cat("importing: ", done, "/", total, " runs, ",
                       Rate(done, took), ", ETA ",
                       HumanSeconds(per_s > 0 ? (total - done) / per_s : 0)));
    }
  };
  std::vector<std::thread> threads;
  for (size_t l = 1; l < lanes; ++l) threads.emplace_back(lane, l);
  lane(0);
  for (std::thread& t : threads) t.join();
  if (!failed.ok()) return Stopped(failed, done, total);
  progress.Say(Cat("imported ", done, " runs in ",
                   absl::FormatDuration(absl::Trunc(absl::Now() - start,
                                                    absl::Milliseconds(1)))),
               true);
  if (g.output == "json") {
    report.PrintJson(plan);
  } else {
    report.PrintTable(plan);
  }
  return kExitOk;
}

}  // namespace

void RegisterImportCommand(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto f = std::make_shared<ImportFlags>();
  CLI::App* cmd = app.add_subcommand(
      "import",
      "Rebuild running sets and queues from kubectl output by "
      "Pipelines-as-Code's rules (docs/migration.md)");
  cmd->add_option("--pipelineruns", f->prs,
                  "kubectl get pipelineruns -A -o json (or -o yaml); - for "
                  "stdin; read as a stream, any size");
  cmd->add_option("--repositories", f->repos,
                  "Repository manifests (kubectl get repositories -A -o "
                  "yaml); - for stdin");
  cmd->add_option("--group-label", f->labels.group,
                  "A PipelineRun label whose value is a queued run's "
                  "supersede group (e.g. pipelinesascode.tekton.dev/"
                  "pull-request)");
  cmd->add_option("--priority-label", f->labels.priority,
                  "A PipelineRun label whose value (an integer) is a queued "
                  "run's priority");
  cmd->add_option("--global-repository", f->global_repository,
                  "Pipelines-as-Code's global Repository (namespace/name), "
                  "whose concurrency_limit a Repository setting none takes; "
                  "default: the one named pipelines-as-code; none: no merge");
  cmd->add_flag("--dry-run", f->dry_run,
                "Print the plan per repository (adopted, queued in order, "
                "skipped with reasons); write nothing");
  cmd->add_flag("--progress", f->progress,
                "Show the progress line on stderr also when it is not a "
                "terminal");
  cmd->add_option("--parallel", f->parallel,
                  "Requests in flight at once, each for its own share of the "
                  "repositories (1-16)")
      ->capture_default_str();
  cmd->add_option("--batch-size", f->batch_size,
                  "Runs per request (1-5000; each request is applied "
                  "idempotently)")
      ->capture_default_str();
  cmd->callback([&g, f, run] { *run = [&g, f] { return Import(g, *f); }; });
}

}  // namespace pac::concurrency::cli
