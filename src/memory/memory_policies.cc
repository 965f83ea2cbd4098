// The memory driver's queue policies (docs/policies.md): queue deadlines
// and the removal of runs past them, and supersede groups. Admission and
// release are in memory_driver.cc, the operator actions (ClearQueue, the
// policy) in memory_operations.cc.
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "pac/concurrency/status.h"
#include "src/common/keys.h"
#include "src/common/logging.h"
#include "src/memory/memory_driver.h"

namespace pac::concurrency::internal {

absl::Time MemoryDriver::QueueDeadline(const RepoState& rs,
                                       const QueueRec& rec) {
  if (rec.max_queue_time.has_value()) {
    return rec.enqueued_at + *rec.max_queue_time;
  }
  if (rs.policy.max_queue_time.has_value()) {
    return rec.enqueued_at + *rs.policy.max_queue_time;
  }
  return absl::InfiniteFuture();
}

void MemoryDriver::Enqueue(RepoState& rs, const QueueKey& key, QueueRec rec,
                           Effects& fx) {
  const absl::Time deadline = QueueDeadline(rs, rec);
  rs.earliest_deadline = std::min(rs.earliest_deadline, deadline);
  fx.wake = std::min(fx.wake, deadline);
  rs.queued.emplace(rec.run_key, key);
  rs.queue.emplace(key, std::move(rec));
}

void MemoryDriver::NoteDeadlines(RepoState& rs, Effects& fx) {
  rs.earliest_deadline = absl::InfiniteFuture();
  for (const auto& [k, rec] : rs.queue) {
    rs.earliest_deadline =
        std::min(rs.earliest_deadline, QueueDeadline(rs, rec));
  }
  fx.wake = std::min(fx.wake, rs.earliest_deadline);
}

void MemoryDriver::TimeOut(Shard& shard, const std::string& repo_key,
                           RepoState& rs, absl::Time now, Effects& fx) {
  if (now >= rs.earliest_deadline) {
    absl::Time earliest = absl::InfiniteFuture();
    for (auto it = rs.queue.begin(); it != rs.queue.end();) {
      const absl::Time deadline = QueueDeadline(rs, it->second);
      if (deadline > now) {
        earliest = std::min(earliest, deadline);
        ++it;
        continue;
      }
      std::string run = std::move(it->second.run_key);
      it = rs.queue.erase(it);
      rs.queued.erase(run);
      logger_->info("{} in {} timed out in the queue", run, repo_key);
      AddEvent(shard, repo_key, WatchEventType::kRemoved, run, fx,
               kRemovedTimedOut);
      rs.removed[std::move(run)] = std::string(kRemovedTimedOut);
    }
    rs.earliest_deadline = earliest;
  }
}

MemoryDriver::QueueKey MemoryDriver::KeyOf(QueueMode mode, absl::Time creation,
                                           int32_t priority, int64_t sequence) {
  const int64_t us = absl::ToUnixMicros(creation);
  switch (mode) {
    case QueueMode::kNewestFirst:
      return QueueKey{0, -us, sequence};
    case QueueMode::kPriority:
      return QueueKey{-static_cast<int64_t>(priority), us, sequence};
    case QueueMode::kOldestFirst:
      break;
  }
  return QueueKey{0, us, sequence};
}

QueueEntry MemoryDriver::EntryOf(const QueueKey& key, const QueueRec& rec,
                                 int64_t position) {
  return QueueEntry{rec.run_key,     rec.creation_time, key.sequence,
                    rec.enqueued_at, position,          rec.priority};
}

void MemoryDriver::Reorder(RepoState& rs) {
  std::map<QueueKey, QueueRec> queue;
  rs.queued.clear();
  for (auto& [k, rec] : rs.queue) {
    QueueKey key =
        KeyOf(rs.policy.mode, rec.creation_time, rec.priority, k.sequence);
    rs.queued.emplace(rec.run_key, key);
    queue.emplace(key, std::move(rec));
  }
  rs.queue = std::move(queue);
}

void MemoryDriver::CancelRunning(Shard& shard, const std::string& repo_key,
                                 RepoState& rs, const std::string& run,
                                 const std::string& group, Effects& fx) {
  for (auto& [other, rec] : rs.running) {
    if (rec.group != group || other == run || rec.cancel_requested) continue;
    rec.cancel_requested = true;
    AddEvent(shard, repo_key, WatchEventType::kCancelRequested, other, fx);
    logger_->info("{} in {} asked to stop by {} (group {})", other, repo_key,
                  run, group);
  }
}

bool MemoryDriver::Supersede(Shard& shard, const std::string& repo_key,
                             RepoState& rs, const std::string& run,
                             const std::string& group, absl::Time creation,
                             Effects& fx) {
  // Newest by creation time, then enqueue order, whatever the queue's
  // mode. The caller's place: its entry, or where it would join (after
  // every entry of its creation time).
  auto own = rs.queued.find(run);
  std::pair<absl::Time, int64_t> mine{creation, INT64_MAX};
  if (own != rs.queued.end()) {
    mine = {rs.queue.at(own->second).creation_time, own->second.sequence};
  }
  std::vector<QueueKey> older;
  bool newer = false;
  for (const auto& [k, rec] : rs.queue) {
    if (rec.group != group || rec.run_key == run) continue;
    if (mine < std::make_pair(rec.creation_time, k.sequence)) {
      newer = true;
    } else {
      older.push_back(k);
    }
  }
  std::vector<std::string> gone;  // the runs removed
  if (newer) {                    // the caller is the older one
    if (own != rs.queued.end()) {
      rs.queue.erase(own->second);
      rs.queued.erase(own);
    }
    gone.push_back(run);
  } else {
    for (const QueueKey& k : older) {
      auto it = rs.queue.find(k);
      gone.push_back(std::move(it->second.run_key));
      rs.queue.erase(it);
      rs.queued.erase(gone.back());
    }
  }
  for (const std::string& r : gone) {
    rs.removed[r] = std::string(kRemovedSuperseded);
    AddEvent(shard, repo_key, WatchEventType::kRemoved, r, fx,
             kRemovedSuperseded);
    logger_->info("{} in {} superseded (group {})", r, repo_key, group);
  }
  return newer;
}

}  // namespace pac::concurrency::internal
