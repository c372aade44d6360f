// Cost of a logging call below the minimum level (must be a few ns) and of a
// formatted line written to a sink that discards it.
//
//   log_bench
#include <string>

#include "benchmark/benchmark.h"
#include "obs/log.h"

namespace quell::obs {
namespace {

class NullSink : public LogSink {
 public:
  void Write(std::string_view line) override { benchmark::DoNotOptimize(line.data()); }
};

void BM_LogDisabled(benchmark::State& state) {
  Logger logger(std::make_unique<NullSink>(), Logger::Options{Level::kInfo, {}});
  const std::string id = "m_0123456789";
  for (auto _ : state) {
    logger.Debug("mitigation created", {{"mitigation", id}, {"policy", "bots"}, {"n", 3}});
  }
}
BENCHMARK(BM_LogDisabled)->Threads(1)->Threads(2)->UseRealTime();

void BM_LogEnabled(benchmark::State& state) {
  Logger logger(std::make_unique<NullSink>(), Logger::Options{Level::kInfo, {}});
  const std::string id = "m_0123456789";
  for (auto _ : state) {
    logger.Info("mitigation created",
                {{"mitigation", id}, {"policy", "bots"}, {"request_id", "r_42"}, {"n", 3}});
  }
}
BENCHMARK(BM_LogEnabled)->Threads(1)->Threads(2)->UseRealTime();

void BM_FormatLine(benchmark::State& state) {
  const Field fields[] = {{"mitigation", "m_0123456789"}, {"policy", "bots"}, {"n", 3}};
  std::string out;
  const absl::Time now = absl::Now();
  for (auto _ : state) {
    out.clear();
    FormatLogLine(out, now, Level::kInfo, "mitigation created", fields);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_FormatLine);

}  // namespace
}  // namespace quell::obs

BENCHMARK_MAIN();
