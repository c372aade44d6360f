// Progress of an import on stderr: on a terminal a live bar redrawn about 5 times a
// second (rows, rows/s, bytes, ETA from the bytes left when the size is known); elsewhere
// a plain line every few seconds, for logs.
//
// Thread-safety: confined to the importing thread. Borrows the stream.
#ifndef QUELL_IMPORTER_PROGRESS_H_
#define QUELL_IMPORTER_PROGRESS_H_

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/time/time.h"

namespace quell::importer {

class Progress {
 public:
  enum class Mode { kOff, kBar, kLines };
  //! kBar when `out` is a terminal, kLines otherwise.
  static Mode AutoMode(FILE* out);

  Progress(FILE* out, Mode mode, absl::Duration line_every = absl::Seconds(5));

  //! Sets the total raw bytes of every input (nullopt: unknown, no ETA).
  void SetTotal(std::optional<uint64_t> bytes) { total_ = bytes; }
  //! Records the state; redraws when due.
  void Update(int64_t rows, uint64_t bytes);
  //! Clears the bar (before other output).
  void Finish();

  //! One rendering, for tests: "1,234,567 rows  250,000 rows/s  120.5 MiB / 300 MiB  ETA 12s".
  //! The rate and the ETA are of what was done in `elapsed`: rows and bytes above
  //! `base_rows` and `base_bytes` (a resumed run's checkpoint, and the bytes it skipped).
  static std::string Render(int64_t rows, uint64_t bytes, std::optional<uint64_t> total,
                            absl::Duration elapsed, int width, int64_t base_rows = 0,
                            uint64_t base_bytes = 0);

 private:
  FILE* out_;
  Mode mode_;
  absl::Duration every_;
  absl::Time start_;  // of the rate: the first Update (a resumed run's rows and skip before it)
  absl::Time last_;
  bool based_ = false;
  int64_t base_rows_ = 0;
  uint64_t base_bytes_ = 0;
  std::optional<uint64_t> total_;
  bool drawn_ = false;
};

//! "1.5 MiB".
std::string HumanBytes(uint64_t bytes);
//! "1,234,567".
std::string WithCommas(int64_t n);

}  // namespace quell::importer

#endif  // QUELL_IMPORTER_PROGRESS_H_
