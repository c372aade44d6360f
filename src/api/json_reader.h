// Strict reading of JSON request bodies: every field is checked for type, unknown fields
// are errors, and every error names its field path ("detections[2].score"), so a client
// learns everything wrong with a request in one reply.
//
// Thread-safety: a reader is confined to one thread; ParseJsonBody and SplitNdjsonLines
// are thread-safe.
#ifndef QUELL_API_JSON_READER_H_
#define QUELL_API_JSON_READER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/errors.h"
#include "rapidjson/document.h"

namespace quell::api {

//! Parses `body` into `doc`. On failure returns an error naming the byte offset.
std::optional<ApiError> ParseJsonBody(std::string_view body, rapidjson::Document* doc);

//! A 413 for a batch of `got` items where at most `max` are taken: "a batch holds at
//! most MAX NOUN, got GOT".
ApiError TooManyItems(std::string_view noun, size_t max, size_t got);

// The items of a body that is one object or {"FIELD": [object, ...]}.
struct BodyItems {
  std::vector<const rapidjson::Value*> values;  // into the document, in order
  bool batch = false;                           // the {"FIELD": [...]} form
};
//! Reads `doc` as one object or {`field`: [1..max_items objects]}; `item` names one in
//! the error for a body that is not an object ("a detection"). Other errors: `field` not the only
//! member or not an array, an empty array (400), more than `max_items` (413, TooManyItems(field,
//! ...)). The items themselves are not checked.
std::optional<ApiError> ReadBodyItems(const rapidjson::Document& doc, std::string_view field,
                                      std::string_view item, size_t max_items, BodyItems* out);

//! The lines of an NDJSON body that hold anything but spaces, tabs and "\r" (what
//! `quell import` skips as blank too), without their "\n" or "\r\n": views into `body`.
std::vector<std::string_view> SplitNdjsonLines(std::string_view body);

//! The path below `v` ("a", "a.b", "a[2].c") of the first key an object in it holds
//! twice, or empty. Which of the two counts is not to be guessed: the policy engine read
//! the first, most JSON libraries (a reviewer's tool, a proxy) keep the last.
std::string RepeatedKey(const rapidjson::Value& v);

// Reads the members of one JSON object, collecting errors into `errors`.
class ObjectReader {
 public:
  // `path` is the object's own path ("" for the root, "detections[2]" for an item).
  ObjectReader(const rapidjson::Value& value, std::string path, std::vector<FieldError>* errors);

  bool is_object() const { return value_.IsObject(); }

  //! A string member. Absent or null -> nullopt (an error if `required`). Wrong type -> error.
  std::optional<std::string> String(std::string_view name, bool required, size_t max_bytes = 4096);
  //! A string a person wrote (a reason, a note, a statement): as String, and no control
  //! character but tab and line breaks (it lands in records, logs and terminals).
  std::optional<std::string> Text(std::string_view name, bool required, size_t max_bytes);
  std::optional<double> Number(std::string_view name, bool required);
  std::optional<int64_t> Int(std::string_view name, bool required);
  //! A boolean member. Absent -> nullopt; unlike the other readers, null is an error, not
  //! absent (a flag's default may be the consequential choice: a rollback's dry_run).
  std::optional<bool> Bool(std::string_view name, bool required);
  //! An array of strings.
  std::optional<std::vector<std::string>> Strings(std::string_view name, bool required,
                                                  size_t max_items = 1000);
  //! Any value (object, array...), returned as-is for the caller to read further.
  const rapidjson::Value* Raw(std::string_view name, bool required);

  //! Adds an error for every member that was never asked for, and for a known one given
  //! twice ("given twice": which one counts is not to be guessed).
  void RejectUnknown();

  //! Adds an error at `name` under this object's path.
  void Fail(std::string_view name, std::string message);
  std::string PathOf(std::string_view name) const;

 private:
  const rapidjson::Value* Find(std::string_view name, bool required, const char* what);

  const rapidjson::Value& value_;
  std::string path_;
  std::vector<FieldError>* errors_;
  std::vector<std::string> seen_;
};

}  // namespace quell::api

#endif  // QUELL_API_JSON_READER_H_
