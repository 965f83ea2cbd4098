#include "src/server/metrics.h"

#include <algorithm>
#include <cmath>

#include "fmt/format.h"

namespace pac::concurrency::server {

using internal::MutexLock;

namespace {

std::string FormatLabels(const Labels& labels, const char* extra_name = nullptr,
                         const std::string& extra_value = "") {
  if (labels.empty() && extra_name == nullptr) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ",";
    first = false;
    out += fmt::format("{}=\"{}\"", k, EscapeLabelValue(v));
  }
  if (extra_name != nullptr) {
    if (!first) out += ",";
    out += fmt::format("{}=\"{}\"", extra_name, extra_value);
  }
  out += "}";
  return out;
}

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return fmt::format("{}", static_cast<int64_t>(v));
  }
  return fmt::format("{}", v);
}

}  // namespace

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

const std::vector<double>& Metrics::Buckets() {
  static const std::vector<double> kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
      1,      2.5,   5,      10,    30,   60,    300,  900, 3600};
  return kBuckets;
}

void Metrics::Inc(const std::string& name, const Labels& labels, double delta) {
  MutexLock lock(&mu_);
  counters_[name][labels] += delta;
}

void Metrics::Observe(const std::string& name, const Labels& labels,
                      double value) {
  const auto& bounds = Buckets();
  size_t i =
      std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  MutexLock lock(&mu_);
  Histogram& h = histograms_[name][labels];
  if (h.counts.empty()) h.counts.assign(bounds.size() + 1, 0);
  h.counts[i]++;
  h.count++;
  h.sum += value;
}

void Metrics::Describe(const std::string& name, const std::string& type,
                       const std::string& help) {
  MutexLock lock(&mu_);
  help_[name] = {type, help};
}

void Metrics::AppendHeader(std::string* out, const std::string& name,
                           const char* fallback_type) const {
  auto it = help_.find(name);
  if (it != help_.end()) {
    *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, it->second.second,
                        name, it->second.first);
  } else {
    *out += fmt::format("# TYPE {} {}\n", name, fallback_type);
  }
}

std::string Metrics::Render(const std::vector<Gauge>& gauges) const {
  std::string out;
  MutexLock lock(&mu_);
  for (const auto& [name, series] : counters_) {
    AppendHeader(&out, name, "counter");
    for (const auto& [labels, v] : series) {
      out +=
          fmt::format("{}{} {}\n", name, FormatLabels(labels), FormatValue(v));
    }
  }
  const auto& bounds = Buckets();
  for (const auto& [name, series] : histograms_) {
    AppendHeader(&out, name, "histogram");
    for (const auto& [labels, h] : series) {
      uint64_t cumulative = 0;
      for (size_t i = 0; i < bounds.size(); ++i) {
        cumulative += h.counts[i];
        out += fmt::format("{}_bucket{} {}\n", name,
                           FormatLabels(labels, "le", FormatValue(bounds[i])),
                           cumulative);
      }
      out += fmt::format("{}_bucket{} {}\n", name,
                         FormatLabels(labels, "le", "+Inf"), h.count);
      out += fmt::format("{}_sum{} {}\n", name, FormatLabels(labels), h.sum);
      out +=
          fmt::format("{}_count{} {}\n", name, FormatLabels(labels), h.count);
    }
  }
  std::string last;
  for (const Gauge& g : gauges) {
    if (g.name != last) {
      AppendHeader(&out, g.name, "gauge");
      last = g.name;
    }
    out += fmt::format("{}{} {}\n", g.name, FormatLabels(g.labels),
                       FormatValue(g.value));
  }
  return out;
}

}  // namespace pac::concurrency::server
