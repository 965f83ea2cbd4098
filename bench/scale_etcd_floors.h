// etcd's own costs beside the driver's in bench/scale_bench.cc, measured
// over the driver's gRPC client in the same phase: raw Puts, raw pairs of
// the driver's two Txns without the driver, and a status's raw reads.
#ifndef PAC_BENCH_SCALE_ETCD_FLOORS_H_
#define PAC_BENCH_SCALE_ETCD_FLOORS_H_

#include <string>
#include <utility>

#include "bench/scale_common.h"
#include "pac/concurrency/concurrency.h"

namespace pac::concurrency::scale {

// `threads` threads each Put one key of theirs in a loop for `seconds`.
PairResult RawEtcdPuts(const DriverConfig& config, const Sizes& z,
                       const std::string& tag);

// `threads` threads loop over a light acquire's and a release's Txns.
PairResult RawEtcdTxnPairs(const DriverConfig& config, const Sizes& z,
                           const std::string& tag);

// The p99 (ms) of a status's reads of `repo_key`: its Range, its lease TTL.
std::pair<double, double> RawEtcdReads(const DriverConfig& config, Driver* d,
                                       const std::string& repo_key, int count);

}  // namespace pac::concurrency::scale

#endif  // PAC_BENCH_SCALE_ETCD_FLOORS_H_
