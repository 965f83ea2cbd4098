// The memory driver's imports: ImportRuns and ImportBatch, each one step
// under the locks of the shards the parts live in. Admission, release and
// the reads are in memory_driver.cc.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/common/strings.h"
#include "src/memory/memory_driver.h"

namespace pac::concurrency::internal {

// One step under the shard's lock: the limit, the running runs, the
// waiting runs queued, then the queue admitted into free slots.
// A batch of one part (which ImportBatch checks as ImportRuns would).
absl::StatusOr<ImportResult> MemoryDriver::ImportRuns(
    const Context& ctx, const Repository& repo, const ImportRequest& request) {
  auto out = ImportBatch(ctx, {RepositoryImport{repo, request}});
  if (!out.ok()) return out.status();
  return std::move(out->front());
}

absl::StatusOr<std::vector<ImportResult>> MemoryDriver::ImportBatch(
    const Context& ctx, const std::vector<RepositoryImport>& parts) {
  if (absl::Status s = ValidateImportBatch(parts, GetImportCapacity());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Err(); !s.ok()) return s;
  if (absl::Status s = CheckOpen(); !s.ok()) return s;
  const absl::Time now = clock_->Now();
  // Every shard the batch touches, locked in index order (as no other
  // step locks two), so the batch is one step to every reader.
  std::set<size_t> shard_ids;
  for (const RepositoryImport& p : parts) {
    shard_ids.insert(ShardIndex(p.repository.Key()));
  }
  std::vector<ImportResult> out(parts.size());
  Effects fx;
  {
    std::vector<std::unique_ptr<MutexLock>> locks;
    for (size_t i : shard_ids) {
      locks.push_back(std::make_unique<MutexLock>(&shards_[i].mu));
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      ImportLocked(parts[i].repository, parts[i].request, now, fx, out[i]);
    }
  }
  for (ImportResult& r : out) {
    for (const Lease& l : r.running) NoteExpiry(l.expires_at);
  }
  Deliver(fx);
  for (const RepositoryImport& p : parts) {
    logger_->info("imported {} running and {} waiting runs into {}",
                  p.request.running.size(), p.request.waiting.size(),
                  p.repository.Key());
  }
  return out;
}

void MemoryDriver::ImportLocked(const Repository& repo,
                                const ImportRequest& request, absl::Time now,
                                Effects& fx, ImportResult& out) {
  const std::string repo_key = repo.Key();
  Shard& shard = ShardFor(repo_key);
  shard.mu.AssertHeld();
  absl::flat_hash_set<std::string_view> mine;
  for (const std::string& run : request.running) mine.insert(run);
  for (const ImportRequest::Waiting& w : request.waiting) {
    mine.insert(w.pipeline_run_key);
  }
  const size_t admitted_before = fx.admitted.size();
  RepoState& rs =
      Enter(shard, repo_key, EffectiveLimit(repo), !request.set_limit, now, fx);
  for (const std::string& run : request.running) {
    auto it = rs.running.find(run);
    if (it == rs.running.end()) {
      if (auto q = rs.queued.find(run); q != rs.queued.end()) {
        rs.queue.erase(q->second);
        rs.queued.erase(q);
      }
      rs.removed.erase(run);  // the cluster runs it: adopted
      Grant(shard, repo_key, rs, run, now, "");
      AddEvent(shard, repo_key, WatchEventType::kAdmitted, run, fx);
      it = rs.running.find(run);
    }
    out.running.push_back(MakeLease(repo_key, run, it->second));
  }
  for (const ImportRequest::Waiting& w : request.waiting) {
    const std::string& run = w.pipeline_run_key;
    if (rs.running.count(run) != 0 || rs.queued.count(run) != 0 ||
        rs.removed.contains(run)) {
      continue;  // held, or removed: stays out of the queue
    }
    QueueKey key =
        KeyOf(rs.policy.mode, w.creation_time, w.priority,
              next_sequence_.fetch_add(1, std::memory_order_relaxed));
    Enqueue(
        rs, key,
        QueueRec{run, now, w.group, std::nullopt, w.creation_time, w.priority},
        fx);
  }
  Promote(shard, repo_key, rs, now, fx);
  absl::flat_hash_map<std::string_view, int64_t> places;
  int64_t pos = 0;
  for (const auto& [qk, rec] : rs.queue) places[rec.run_key] = ++pos;
  for (const ImportRequest::Waiting& w : request.waiting) {
    const std::string& run = w.pipeline_run_key;
    if (auto it = rs.running.find(run); it != rs.running.end()) {
      out.admitted.push_back(MakeLease(repo_key, run, it->second));
    } else if (auto q = rs.queued.find(run); q != rs.queued.end()) {
      out.queued.push_back(
          EntryOf(q->second, rs.queue.at(q->second), places.at(run)));
    }
  }
  for (size_t i = admitted_before; i < fx.admitted.size(); ++i) {
    if (!mine.contains(fx.admitted[i].pipeline_run_key)) {
      out.others_admitted.push_back(fx.admitted[i]);
    }
  }
}

}  // namespace pac::concurrency::internal
