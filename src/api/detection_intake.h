// The decision path of POST /v1/detections, shared by every front end that takes
// detections (the HTTP route and gRPC's Detections.Submit): validation (ReadDetection and
// the active policy set's detection types), the source check of the submitting key,
// evaluation against the active policy set, and one ledger step per batch
// (workflow::ApplyDetections: safeguards, idempotent per (source, id), durable when
// answered), with the decision metrics.
//
// A batch goes through two stages:
//   1. Validate (cheap, any thread): every item is read on its own; a bad item gets its
//      own rejected reply and does not sink the others. A valid item whose source the key
//      may not submit as fails the whole batch (`forbidden`), so nothing is half-applied.
//   2. EvaluateAndApply (may wait on storage: never on an event loop): evaluates the valid
//      items on the calling thread and submits one ledger step; `done` is called once,
//      from the ledger's finisher thread (or the calling thread when nothing is to be applied).
//
// The per-item replies are the HTTP API's per-item result objects (SPEC "HTTP API"):
//   {"index":i,"id":...,"source":...,"status":"accepted"|"duplicate","decisions":[...]}
//   {"index":i,"id":...,"status":"rejected","error":{"code":...,"message":...,"details":[...]}}
// They are the contract with other front ends too, which read the fields they need.
//
// Thread-safety: a DetectionIntake is immutable after construction and thread-safe; it
// borrows the API's context and policy holder and must not outlive the Api.
#ifndef QUELL_API_DETECTION_INTAKE_H_
#define QUELL_API_DETECTION_INTAKE_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "api/errors.h"
#include "auth/keys.h"
#include "engine/engine.h"
#include "obs/trace.h"
#include "rapidjson/document.h"

namespace quell::api {

namespace internal {
class Context;
class PolicyHolder;
}  // namespace internal

class DetectionIntake {
 public:
  // One item of a batch after validation.
  struct Item {
    size_t index = 0;
    std::optional<engine::Detection> detection;  // empty: rejected
    std::string rejected_reply;                  // the per-item reply when rejected
  };
  struct Validated {
    std::vector<Item> items;
    // Non-empty: valid items whose source the key may not submit as (one error each,
    // naming the field). The batch must be refused whole.
    std::vector<FieldError> forbidden;
  };
  // Per-item replies in item order, or the error of the whole batch (a storage error
  // from the ledger; kPermissionDenied from SubmitJson when a source is forbidden).
  using Done = std::function<void(absl::StatusOr<std::vector<std::string>>)>;

  DetectionIntake(internal::Context* ctx, internal::PolicyHolder* policies);

  //! Stage 1. values[i] is read at paths[i] ("" or "detections[3]"), as of `now`.
  Validated Validate(const auth::Principal& who, const std::vector<const rapidjson::Value*>& values,
                     const std::vector<std::string>& paths, absl::Time now) const;

  //! Stage 2. Evaluates the valid items (on this thread) and applies them in one ledger
  //! step; `origin` labels quell_detections_total ("api"). Items must not be forbidden.
  //! When `trace_parent` is sampled (the HTTP request's span) and tracing is on, the
  //! evaluation is recorded as its child span "engine.evaluate" and the ledger step's
  //! commit-thread spans ("ledger.commit", "index.apply") as its children too.
  void EvaluateAndApply(std::vector<Item> items, const auth::Principal& who, absl::Time now,
                        std::string origin, Done done, obs::SpanContext trace_parent = {}) const;

  //! Items given as JSON texts (gRPC's, the lines of an NDJSON body), parsed into one
  //! pool: values[i] is the i-th text's value, or an empty object when the text is not
  //! JSON (why in unparsed[i]). Not movable: the values point into the pool.
  struct ParsedTexts {
    rapidjson::MemoryPoolAllocator<> pool;
    std::vector<rapidjson::Value> values;
    std::vector<std::optional<std::string>> unparsed;
  };
  static std::unique_ptr<ParsedTexts> ParseTexts(const std::vector<std::string_view>& texts);

  //! Stage 1 for parsed texts: each is read at path "" (errors name bare fields:
  //! "score"); a text that did not parse is a rejected item with its parse error.
  Validated ValidateTexts(const auth::Principal& who, const ParsedTexts& texts,
                          absl::Time now) const;

  //! Both stages for detections given as JSON object texts, each read at path "" (the
  //! field names of errors are bare: "score"). A text that is not a JSON object is a
  //! rejected item, and so is an error item (the front end could not read it: its message
  //! is the item's error, field "detection"). A forbidden source: kPermissionDenied,
  //! nothing applied. For front ends other than HTTP (gRPC); call it off any event loop.
  //! `trace_parent` as for EvaluateAndApply (the gRPC call's server span).
  void SubmitJson(const auth::Principal& who, std::vector<absl::StatusOr<std::string>> items,
                  Done done, obs::SpanContext trace_parent = {}) const;

 private:
  internal::Context* ctx_;
  internal::PolicyHolder* policies_;
};

}  // namespace quell::api

#endif  // QUELL_API_DETECTION_INTAKE_H_
