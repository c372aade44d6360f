#include "importer/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace quell::importer {

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(bytes, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

std::string WithCommas(int64_t n) {
  std::string digits = absl::StrCat(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

Progress::Mode Progress::AutoMode(FILE* out) {
  return isatty(fileno(out)) ? Mode::kBar : Mode::kLines;
}

Progress::Progress(FILE* out, Mode mode, absl::Duration line_every)
    : out_(out), mode_(mode), every_(line_every), start_(absl::Now()), last_(start_) {}

std::string Progress::Render(int64_t rows, uint64_t bytes, std::optional<uint64_t> total,
                             absl::Duration elapsed, int width, int64_t base_rows,
                             uint64_t base_bytes) {
  double secs = absl::ToDoubleSeconds(elapsed);
  int64_t rate = secs > 0 ? static_cast<int64_t>(static_cast<double>(rows - base_rows) / secs) : 0;
  std::string text =
      absl::StrCat(WithCommas(rows), " rows  ", WithCommas(rate), " rows/s  ", HumanBytes(bytes));
  std::string bar;
  if (total && *total > 0) {
    double frac = std::min(1.0, static_cast<double>(bytes) / static_cast<double>(*total));
    absl::StrAppend(&text, " / ", HumanBytes(*total));
    if (bytes > base_bytes && secs > 0) {
      // What is left, at the pace of what this run did.
      double eta = secs * static_cast<double>(*total > bytes ? *total - bytes : 0) /
                   static_cast<double>(bytes - base_bytes);
      absl::StrAppend(&text, "  ETA ",
                      absl::FormatDuration(absl::Seconds(static_cast<int64_t>(eta + 0.5))));
    }
    int cells = width - static_cast<int>(text.size()) - 10;
    if (cells >= 10) {
      cells = std::min(cells, 40);
      int full = static_cast<int>(frac * cells);
      bar = absl::StrCat("[", std::string(full, '#'), std::string(cells - full, '.'), "] ",
                         absl::StrFormat("%3d%%", static_cast<int>(frac * 100)), " ");
    }
  }
  return bar + text;
}

void Progress::Update(int64_t rows, uint64_t bytes) {
  if (mode_ == Mode::kOff) return;
  absl::Time now = absl::Now();
  if (!based_) {  // the pace counts from here: a resumed run's earlier rows are not this run's
    based_ = true;
    base_rows_ = rows;
    base_bytes_ = bytes;
    start_ = now;
    return;
  }
  absl::Duration due = mode_ == Mode::kBar ? absl::Milliseconds(200) : every_;
  if (now - last_ < due) return;
  last_ = now;
  if (mode_ == Mode::kBar) {
    winsize ws{};
    int width = ioctl(fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
    std::string line = Render(rows, bytes, total_, now - start_, width, base_rows_, base_bytes_);
    if (static_cast<int>(line.size()) >= width) line.resize(width - 1);
    std::fprintf(out_, "\r\033[K%s", line.c_str());
    drawn_ = true;
  } else {
    std::fprintf(out_, "quell import: %s\n",
                 Render(rows, bytes, total_, now - start_, 0, base_rows_, base_bytes_).c_str());
  }
  std::fflush(out_);
}

void Progress::Finish() {
  if (drawn_) {
    std::fprintf(out_, "\r\033[K");
    std::fflush(out_);
    drawn_ = false;
  }
}

}  // namespace quell::importer
