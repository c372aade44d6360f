// Named entity lists (SPEC GET/PUT /v1/lists/{name}, POST /v1/lists/{name}/entries):
// protected, allow, deny, watch. Every change is a kList ledger change; the store
// materialises the entries, the safeguards follow them (protected lists hold decisions).
#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "api/internal/safeguard_routes.h"
#include "api/json_reader.h"
#include "core/entity.h"
#include "core/mitigation.h"
#include "core/strings.h"
#include "workflow/safeguards.h"

namespace quell::api::internal {
namespace {

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '_' || c == '-'));
    if (!ok) return false;
  }
  return true;
}

struct ListView {
  std::string name;
  bool is_protected = false;
  std::string kind;
  bool exists = false;
};

// The list as the store and the active policy set declare it (either may flag it protected).
absl::StatusOr<ListView> Describe(ledger::Store& store, const policy::PolicySet& set,
                                  const std::string& name) {
  ListView v;
  v.name = name;
  auto lists = store.Lists();
  if (!lists.ok()) return lists.status();
  for (const auto& l : *lists) {
    if (l.name == name) {
      v.exists = true;
      v.is_protected = l.is_protected;
      v.kind = l.kind;
    }
  }
  for (const auto& l : set.lists()) {
    if (l.name == name) {
      v.exists = true;
      v.is_protected = v.is_protected || l.is_protected;
      if (v.kind.empty()) v.kind = l.kind;
    }
  }
  if (v.kind.empty()) v.kind = v.is_protected ? "protected" : "watch";
  return v;
}

std::string ListJson(const ListView& v, const std::vector<std::string>* entries) {
  std::string out = "{\"name\":";
  core::AppendJsonString(v.name, &out);
  absl::StrAppend(&out, ",\"protected\":", v.is_protected ? "true" : "false", ",\"kind\":");
  core::AppendJsonString(v.kind, &out);
  if (entries != nullptr) {
    absl::StrAppend(&out, ",\"size\":", entries->size(), ",\"entries\":");
    core::AppendJsonStrings(*entries, &out);
  }
  out += "}";
  return out;
}

// Reads and normalises an array of entities at `field`.
std::vector<std::string> Entities(ObjectReader& r, std::string_view field,
                                  std::vector<FieldError>* errors) {
  std::vector<std::string> out;
  auto list = r.Strings(field, false, 10000);
  if (!list) return out;
  for (size_t i = 0; i < list->size(); ++i) {
    auto e = core::Entity::Parse((*list)[i]);
    if (!e.ok()) {
      errors->push_back(
          {absl::StrCat(AV(field), "[", i, "]"), std::string(SV(e.status().message()))});
    } else {
      out.push_back(e->str());
    }
  }
  return out;
}

ledger::Mutation ListChange(Context& ctx, std::string name, std::vector<std::string> add,
                            std::vector<std::string> remove, std::optional<bool> is_protected,
                            std::optional<std::string> kind, std::string actor) {
  return [&ctx, name = std::move(name), add = std::move(add), remove = std::move(remove),
          is_protected, kind = std::move(kind),
          actor = std::move(actor)](ledger::Txn& txn, absl::Time) -> absl::Status {
    std::string p = "{\"list\":";
    core::AppendJsonString(name, &p);
    p += ",\"add\":";
    core::AppendJsonStrings(add, &p);
    p += ",\"remove\":";
    core::AppendJsonStrings(remove, &p);
    if (is_protected) absl::StrAppend(&p, ",\"protected\":", *is_protected ? "true" : "false");
    if (kind) {
      p += ",\"kind\":";
      core::AppendJsonString(*kind, &p);
    }
    p += "}";
    ledger::Change c;
    c.kind = ledger::ChangeKind::kList;
    c.actor = actor;
    c.subject = name;
    c.payload = std::move(p);
    auto appended = txn.Append(std::move(c), nullptr);
    if (!appended.ok()) return appended.status();
    // Later decisions of this very commit batch already see the new entries.
    if (ctx.safeguards != nullptr && !add.empty()) ctx.safeguards->NoteProtectedAdds(name, add);
    return absl::OkStatus();
  };
}

void ReplyList(Context& ctx, PolicyHolder& policies, Call& call, const std::string& name,
               int status) {
  auto v = Describe(ctx.deps.ledger->store(), *policies.Current(), name);
  if (!v.ok()) return call.Fail(ApiError::FromStatus(v.status()));
  if (!v->exists) return call.Fail(ApiError::NotFound(absl::StrCat("no list ", name)));
  auto entries = ctx.deps.ledger->store().ListEntries(name);
  if (!entries.ok()) return call.Fail(ApiError::FromStatus(entries.status()));
  call.Send(status, ListJson(*v, &*entries));
}

void SubmitThenReply(Context& ctx, PolicyHolder& policies, Call&& call, ledger::Mutation m,
                     std::string name) {
  auto shared = std::make_shared<Call>(std::move(call));
  ctx.deps.ledger->Submit(std::move(m), [&ctx, &policies, shared, name = std::move(name)](
                                            absl::Status s, std::vector<ledger::Change>) {
    if (!s.ok()) return shared->Fail(ApiError::FromStatus(s));
    // Reading the list back may wait on storage: not on the ledger's finisher thread.
    ctx.OffLoop(std::move(*shared),
                [&ctx, &policies, name](Call& call) { ReplyList(ctx, policies, call, name, 200); });
  });
}

}  // namespace

void AddListRoutes(Router& router, Context& ctx, PolicyHolder& policies) {
  using auth::Permission;
  router.Add("GET", "/v1/lists", Access::Bearer(Permission::kRead), [&ctx, &policies](Call&& call) {
    ctx.OffLoop(std::move(call), [&ctx, &policies](Call& call) {
      std::set<std::string> names;
      auto lists = ctx.deps.ledger->store().Lists();
      if (!lists.ok()) return call.Fail(ApiError::FromStatus(lists.status()));
      for (const auto& l : *lists) names.insert(l.name);
      auto set = policies.Current();
      for (const auto& l : set->lists()) names.insert(l.name);
      std::string body = "{\"lists\":[";
      bool first = true;
      for (const std::string& n : names) {
        auto v = Describe(ctx.deps.ledger->store(), *set, n);
        if (!v.ok()) return call.Fail(ApiError::FromStatus(v.status()));
        if (!first) body += ',';
        first = false;
        body += ListJson(*v, nullptr);
      }
      body += "]}";
      call.Send(200, std::move(body));
    });
  });
  router.Add("GET", "/v1/lists/{name}", Access::Bearer(Permission::kRead),
             [&ctx, &policies](Call&& call) {
               ctx.OffLoop(std::move(call), [&ctx, &policies](Call& call) {
                 ReplyList(ctx, policies, call, call.params[0], 200);
               });
             });
  // PUT: create or update a list's flags; with "entries", the list's whole content.
  router.Add("PUT", "/v1/lists/{name}", Access::Bearer(Permission::kAdmin),
             [&ctx, &policies](Call&& call) {
               std::string name = call.params[0];
               if (!ValidName(name)) {
                 return call.Fail(
                     ApiError::Field("path.name", "list names match [a-z0-9][a-z0-9_-]{0,63}"));
               }
               rapidjson::Document doc;
               if (auto e = ParseJsonBody(call.req.body.empty() ? "{}" : call.req.body, &doc))
                 return call.Fail(*e);
               std::vector<FieldError> errors;
               ObjectReader r(doc, "", &errors);
               auto is_protected = r.Bool("protected", false);
               auto kind = r.String("kind", false, 32);
               bool replace = r.Raw("entries", false) != nullptr;
               std::vector<std::string> entries = Entities(r, "entries", &errors);
               r.RejectUnknown();
               if (kind && *kind != "protected" && *kind != "allow" && *kind != "deny" &&
                   *kind != "watch") {
                 errors.push_back({"kind", "one of protected, allow, deny, watch"});
               }
               if (kind && *kind == "protected" && is_protected && !*is_protected) {
                 errors.push_back({"protected", "a list of kind protected is protected"});
               }
               if (!errors.empty())
                 return call.Fail(ApiError::InvalidArgument("invalid list", std::move(errors)));
               // What the body leaves out stays as it is (a new list: not protected, no
               // kind): a PUT of the entries alone used to unprotect a protected list.
               if (kind && *kind == "protected") is_protected = true;
               ctx.OffLoop(std::move(call), [&ctx, &policies, name, is_protected, kind, replace,
                                             entries = std::move(entries)](Call& call) mutable {
                 if (is_protected && !*is_protected) {
                   // Unprotecting: not a list whose kind is protected (stored, not only
                   // named in this body), nor one the active policy set protects (which
                   // this write could not change: it was ignored, silently).
                   auto lists = ctx.deps.ledger->store().Lists();
                   if (!lists.ok()) return call.Fail(ApiError::FromStatus(lists.status()));
                   for (const ledger::ListInfo& l : *lists) {
                     if (l.name == name && !kind && l.kind == "protected") {
                       return call.Fail(
                           ApiError::Field("protected",
                                           "a list of kind protected is protected: give it another "
                                           "kind in the same request to unprotect it"));
                     }
                   }
                   auto set = policies.Current();
                   for (const auto& l : set->lists()) {
                     if (l.name == name && l.is_protected) {
                       return call.Fail(ApiError::Conflict(absl::StrCat(
                           "list ", name, " is protected by the active policy set (version ",
                           set->version(), "): unprotect it there")));
                     }
                   }
                 }
                 std::vector<std::string> add = entries, remove;
                 if (replace) {
                   auto current = ctx.deps.ledger->store().ListEntries(name);
                   if (!current.ok()) return call.Fail(ApiError::FromStatus(current.status()));
                   std::set<std::string> want(entries.begin(), entries.end());
                   for (const std::string& e : *current) {
                     if (!want.count(e)) remove.push_back(e);
                   }
                 }
                 SubmitThenReply(ctx, policies, std::move(call),
                                 ListChange(ctx, name, std::move(add), std::move(remove),
                                            is_protected, kind, call.who.key_id),
                                 name);
               });
             });
  router.Add(
      "POST", "/v1/lists/{name}/entries", Access::Bearer(Permission::kAdmin),
      [&ctx, &policies](Call&& call) {
        std::string name = call.params[0];
        if (!ValidName(name)) {
          return call.Fail(
              ApiError::Field("path.name", "list names match [a-z0-9][a-z0-9_-]{0,63}"));
        }
        rapidjson::Document doc;
        if (auto e = ParseJsonBody(call.req.body, &doc)) return call.Fail(*e);
        std::vector<FieldError> errors;
        ObjectReader r(doc, "", &errors);
        std::vector<std::string> add = Entities(r, "add", &errors);
        std::vector<std::string> remove = Entities(r, "remove", &errors);
        r.RejectUnknown();
        if (add.empty() && remove.empty() && errors.empty()) {
          errors.push_back({"add", "give entities to add or remove"});
        }
        // Both at once has no one meaning (which applies first?): the caller must choose.
        const std::set<std::string_view> adding(add.begin(), add.end());
        for (size_t i = 0; i < remove.size(); ++i) {
          if (adding.count(remove[i]) > 0) {
            errors.push_back(
                {absl::StrCat("remove[", i, "]"), absl::StrCat(remove[i], " is also in add")});
          }
        }
        if (!errors.empty())
          return call.Fail(ApiError::InvalidArgument("invalid list entries", std::move(errors)));
        // Entries go to a list that exists (PUT /v1/lists/{name}, or declared by the
        // policy set): a misspelt name would otherwise start a new list, and the entities
        // meant for a protected one would stay unprotected.
        ctx.OffLoop(std::move(call), [&ctx, &policies, name, add = std::move(add),
                                      remove = std::move(remove)](Call& call) mutable {
          auto v = Describe(ctx.deps.ledger->store(), *policies.Current(), name);
          if (!v.ok()) return call.Fail(ApiError::FromStatus(v.status()));
          if (!v->exists) {
            return call.Fail(
                ApiError::NotFound(absl::StrCat("no list ", name, ": create it with PUT /v1/lists/",
                                                name, " or declare it in the policy set")));
          }
          std::string actor = call.who.key_id;
          SubmitThenReply(ctx, policies, std::move(call),
                          ListChange(ctx, name, std::move(add), std::move(remove), std::nullopt,
                                     std::nullopt, std::move(actor)),
                          name);
        });
      });
}

void SubmitSimple(Context& ctx, Call&& call, ledger::Mutation inner,
                  absl::AnyInvocable<std::pair<int, std::string>()> render) {
  auto out = std::make_shared<Context::WriteOutcome>();
  ctx.SubmitWrite(Context::WithIdempotency(std::nullopt, std::move(inner), std::move(render), out),
                  out, std::move(call));
}

}  // namespace quell::api::internal
