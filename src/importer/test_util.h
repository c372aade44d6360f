// Test helpers for the importer: compressing, writing files, generating Avro files with
// libavro. Test-only; not part of the library.
#ifndef QUELL_IMPORTER_TEST_UTIL_H_
#define QUELL_IMPORTER_TEST_UTIL_H_

#include <avro.h>
#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace quell::importer::testing {

inline std::string Gzip(const std::string& in) {
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, in.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// With a content checksum, so that corruption is always detected.
inline std::string Zstd(const std::string& in) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  out.resize(ZSTD_compress2(cctx, out.data(), out.size(), in.data(), in.size()));
  ZSTD_freeCCtx(cctx);
  return out;
}

inline void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

inline std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string TempDir(const std::string& name) {
  std::string dir = std::string(::testing::TempDir()) + "quell_importer_" + name + "_" +
                    std::to_string(::getpid());
  std::string cmd = "rm -rf '" + dir + "' && mkdir -p '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) return "";
  return dir;
}

// The documented schema (examples/import/detection.avsc).
inline constexpr char kAvroSchema[] = R"({"type":"record","name":"Detection","namespace":"quell.v1",
 "fields":[{"name":"id","type":"string"},{"name":"source","type":"string"},
 {"name":"type","type":"string"},{"name":"entity","type":"string"},
 {"name":"score","type":"double"},{"name":"observed_at","type":"string"},
 {"name":"evidence","type":["null","string"],"default":null},
 {"name":"related","type":{"type":"array","items":"string"},"default":[]}]})";

struct AvroRow {
  std::string id, source, type, entity;
  double score = 0;
  std::string observed_at;
  std::string evidence;  // "" = null
  std::vector<std::string> related;
};

// Writes rows with kAvroSchema; returns "" or libavro's error.
inline std::string WriteAvro(const std::string& path, const std::vector<AvroRow>& rows,
                             const char* codec = "null") {
  avro_schema_t schema;
  if (avro_schema_from_json_length(kAvroSchema, sizeof(kAvroSchema) - 1, &schema))
    return avro_strerror();
  std::remove(path.c_str());
  avro_file_writer_t w;
  if (avro_file_writer_create_with_codec(path.c_str(), schema, &w, codec, 0))
    return avro_strerror();
  avro_value_iface_t* iface = avro_generic_class_from_schema(schema);
  avro_value_t v;
  avro_generic_value_new(iface, &v);
  for (const AvroRow& r : rows) {
    avro_value_reset(&v);
    avro_value_t f, b;
    avro_value_get_by_name(&v, "id", &f, nullptr);
    avro_value_set_string(&f, r.id.c_str());
    avro_value_get_by_name(&v, "source", &f, nullptr);
    avro_value_set_string(&f, r.source.c_str());
    avro_value_get_by_name(&v, "type", &f, nullptr);
    avro_value_set_string(&f, r.type.c_str());
    avro_value_get_by_name(&v, "entity", &f, nullptr);
    avro_value_set_string(&f, r.entity.c_str());
    avro_value_get_by_name(&v, "score", &f, nullptr);
    avro_value_set_double(&f, r.score);
    avro_value_get_by_name(&v, "observed_at", &f, nullptr);
    avro_value_set_string(&f, r.observed_at.c_str());
    avro_value_get_by_name(&v, "evidence", &f, nullptr);
    if (r.evidence.empty()) {
      avro_value_set_branch(&f, 0, &b);
      avro_value_set_null(&b);
    } else {
      avro_value_set_branch(&f, 1, &b);
      avro_value_set_string(&b, r.evidence.c_str());
    }
    avro_value_get_by_name(&v, "related", &f, nullptr);
    for (const std::string& e : r.related) {
      avro_value_t item;
      avro_value_append(&f, &item, nullptr);
      avro_value_set_string(&item, e.c_str());
    }
    if (avro_file_writer_append_value(w, &v)) return avro_strerror();
  }
  avro_file_writer_close(w);
  avro_value_decref(&v);
  avro_value_iface_decref(iface);
  avro_schema_decref(schema);
  return "";
}

// A file with an arbitrary schema and no rows (for schema checks).
inline std::string WriteAvroSchemaOnly(const std::string& path, const std::string& json) {
  avro_schema_t schema;
  if (avro_schema_from_json_length(json.data(), json.size(), &schema)) return avro_strerror();
  std::remove(path.c_str());
  avro_file_writer_t w;
  if (avro_file_writer_create(path.c_str(), schema, &w)) return avro_strerror();
  avro_file_writer_close(w);
  avro_schema_decref(schema);
  return "";
}

}  // namespace quell::importer::testing

#endif  // QUELL_IMPORTER_TEST_UTIL_H_
