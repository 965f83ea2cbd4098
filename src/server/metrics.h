// Prometheus text-format metrics of the HTTP service: counters and
// histograms with label sets, plus gauges computed when scraped.
//
// Thread-safe. Rendering follows the text exposition format 0.0.4.
#ifndef PAC_SRC_SERVER_METRICS_H_
#define PAC_SRC_SERVER_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/common/mutex.h"

namespace pac::concurrency::server {

// Label pairs in a fixed order, e.g. {{"code","200"},{"route","/v1/..."}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Metrics {
 public:
  // Adds `delta` to counter `name{labels}`.
  void Inc(const std::string& name, const Labels& labels, double delta = 1);
  // Records `value` (seconds) in histogram `name{labels}`.
  void Observe(const std::string& name, const Labels& labels, double value);
  // Declares help text (and the type) of a metric family.
  void Describe(const std::string& name, const std::string& type,
                const std::string& help);

  // One gauge sample, rendered after the stored families.
  struct Gauge {
    std::string name;
    Labels labels;
    double value;
  };
  // The whole exposition: stored counters and histograms, then `gauges`.
  std::string Render(const std::vector<Gauge>& gauges) const;

  // Histogram bucket bounds (seconds), shared by every histogram.
  static const std::vector<double>& Buckets();

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket, not cumulative
    uint64_t count = 0;
    double sum = 0;
  };
  void AppendHeader(std::string* out, const std::string& name,
                    const char* fallback_type) const PAC_REQUIRES(mu_);

  mutable internal::Mutex mu_;
  std::map<std::string, std::pair<std::string, std::string>> help_
      PAC_GUARDED_BY(mu_);  // name -> (type, help)
  std::map<std::string, std::map<Labels, double>> counters_ PAC_GUARDED_BY(mu_);
  std::map<std::string, std::map<Labels, Histogram>> histograms_
      PAC_GUARDED_BY(mu_);
};

// Escapes a label value for the text format.
std::string EscapeLabelValue(const std::string& v);

}  // namespace pac::concurrency::server

#endif  // PAC_SRC_SERVER_METRICS_H_
