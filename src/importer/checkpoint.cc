#include "importer/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "rapidjson/document.h"

namespace quell::importer {
namespace {

std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return absl::InternalError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

std::string CheckpointToJson(const Checkpoint& c) {
  std::string out = "{\"format\":\"quell-import-checkpoint/1\",\"batch\":";
  core::AppendJsonString(c.batch, &out);
  out += ",\"files\":[";
  for (size_t i = 0; i < c.files.size(); ++i) {
    if (i) out += ',';
    out += "{\"path\":";
    core::AppendJsonString(c.files[i], &out);
    absl::StrAppend(&out, ",\"size\":", i < c.sizes.size() ? c.sizes[i] : -1, "}");
  }
  absl::StrAppend(&out, "],\"file\":", c.file, ",\"offset\":", c.offset, ",\"line\":", c.line,
                  ",\"rows\":", c.rows, ",\"rejects_bytes\":", c.rejects_bytes, ",\"rejects\":");
  core::AppendJsonString(c.rejects, &out);
  if (c.crc) absl::StrAppend(&out, ",\"crc\":", *c.crc);
  out += ",\"destination\":";
  core::AppendJsonString(c.destination, &out);
  absl::StrAppend(&out, ",\"counts\":{\"read\":", c.counts.read,
                  ",\"accepted\":", c.counts.accepted, ",\"duplicate\":", c.counts.duplicate,
                  ",\"rejected\":", c.counts.rejected, ",\"decisions\":{");
  bool first = true;
  for (const auto& [state, n] : c.counts.decisions) {
    if (!first) out += ',';
    first = false;
    core::AppendJsonString(state, &out);
    absl::StrAppend(&out, ":", n);
  }
  out += "}}}\n";
  return out;
}

absl::StatusOr<Checkpoint> CheckpointFromJson(std::string_view json) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  auto bad = [] { return absl::InvalidArgumentError("not a quell import checkpoint"); };
  if (doc.HasParseError() || !doc.IsObject()) return bad();
  auto fmt = doc.FindMember("format");
  if (fmt == doc.MemberEnd() || !fmt->value.IsString() ||
      std::string_view(fmt->value.GetString()) != "quell-import-checkpoint/1") {
    return bad();
  }
  auto i64 = [&](const rapidjson::Value& o, const char* name, int64_t* out) {
    auto m = o.FindMember(name);
    if (m == o.MemberEnd() || !m->value.IsInt64()) return false;
    *out = m->value.GetInt64();
    return true;
  };
  Checkpoint c;
  auto batch = doc.FindMember("batch");
  if (batch == doc.MemberEnd() || !batch->value.IsString()) return bad();
  c.batch = batch->value.GetString();
  auto files = doc.FindMember("files");
  if (files == doc.MemberEnd() || !files->value.IsArray()) return bad();
  for (const rapidjson::Value& f : files->value.GetArray()) {
    if (!f.IsObject() || !f.HasMember("path") || !f["path"].IsString()) return bad();
    int64_t size = -1;
    if (!i64(f, "size", &size)) return bad();
    c.files.emplace_back(f["path"].GetString());
    c.sizes.push_back(size);
  }
  int64_t offset = 0, rejects = 0;
  if (!i64(doc, "file", &c.file) || !i64(doc, "offset", &offset) || !i64(doc, "line", &c.line) ||
      !i64(doc, "rows", &c.rows) || !i64(doc, "rejects_bytes", &rejects) || offset < 0 ||
      rejects < 0 || c.line < 0 || c.rows < 0 || c.file < 0 ||
      c.file > static_cast<int64_t>(c.files.size())) {  // files.size(): all read
    return bad();
  }
  c.offset = static_cast<uint64_t>(offset);
  c.rejects_bytes = static_cast<uint64_t>(rejects);
  if (auto r = doc.FindMember("rejects"); r != doc.MemberEnd()) {  // absent before it was kept
    if (!r->value.IsString()) return bad();
    c.rejects = r->value.GetString();
  }
  if (auto r = doc.FindMember("crc"); r != doc.MemberEnd()) {  // absent: older
    if (!r->value.IsUint()) return bad();
    c.crc = r->value.GetUint();
  }
  if (auto r = doc.FindMember("destination"); r != doc.MemberEnd()) {  // absent: older
    if (!r->value.IsString()) return bad();
    c.destination = r->value.GetString();
  }
  auto counts = doc.FindMember("counts");
  if (counts == doc.MemberEnd() || !counts->value.IsObject()) return bad();
  const rapidjson::Value& k = counts->value;
  if (!i64(k, "read", &c.counts.read) || !i64(k, "accepted", &c.counts.accepted) ||
      !i64(k, "duplicate", &c.counts.duplicate) || !i64(k, "rejected", &c.counts.rejected)) {
    return bad();
  }
  auto decisions = k.FindMember("decisions");
  if (decisions == k.MemberEnd() || !decisions->value.IsObject()) return bad();
  for (auto it = decisions->value.MemberBegin(); it != decisions->value.MemberEnd(); ++it) {
    if (!it->value.IsInt64()) return bad();
    c.counts.decisions[it->name.GetString()] = it->value.GetInt64();
  }
  return c;
}

absl::Status WriteCheckpoint(const std::string& path, const Checkpoint& c) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return absl::InternalError(absl::StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  absl::Status s = WriteAll(fd, CheckpointToJson(c), tmp);
  if (s.ok() && ::fsync(fd) != 0)
    s = absl::InternalError(absl::StrCat("fsync ", tmp, ": ", std::strerror(errno)));
  ::close(fd);
  if (!s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", std::strerror(errno)));
  }
  int dir = ::open(DirOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);  // the rename itself survives a crash
    ::close(dir);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Checkpoint>> ReadCheckpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::optional<Checkpoint>();
    return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(errno)));
  }
  std::stringstream s;
  s << in.rdbuf();
  auto c = CheckpointFromJson(s.str());
  if (!c.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", c.status().message()));
  return std::optional<Checkpoint>(*std::move(c));
}

absl::Status RemoveCheckpoint(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace quell::importer
