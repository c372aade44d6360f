// Compiles a checked AST into the closure tree. Specialised nodes are chosen from the
// static types so that the common shapes (field == "literal", field >= number, string
// `in` a literal list) do no dynamic dispatch beyond one virtual call per node.
#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/number_text.h"
#include "core/status.h"
#include "policy/internal/checker.h"
#include "policy/internal/fields.h"
#include "policy/internal/ip.h"
#include "policy/internal/runtime.h"
#include "re2/re2.h"

namespace quell::policy::internal {
namespace {

using NodePtr = std::unique_ptr<const Node>;

Value Str(std::string_view s) {
  return s.data() == nullptr ? Value::Error(EvalError::kMissing) : Value::String(s);
}

class ConstNode final : public Node {
 public:
  explicit ConstNode(Value v) : value_(v) {}
  explicit ConstNode(std::string s) : storage_(std::move(s)) { value_ = Value::String(storage_); }
  Value Eval(const Frame&) const override { return value_; }
  const Value& value() const { return value_; }

 private:
  std::string storage_;
  Value value_;
};

class DetectionStringNode final : public Node {
 public:
  explicit DetectionStringNode(std::string_view DetectionInput::*member) : member_(member) {}
  Value Eval(const Frame& f) const override {
    const DetectionInput* d = f.input.detection;
    return d == nullptr ? Value::Error(EvalError::kMissing) : Str(d->*member_);
  }

 private:
  std::string_view DetectionInput::*member_;
};

class EventStringNode final : public Node {
 public:
  explicit EventStringNode(std::string_view EventInput::*member) : member_(member) {}
  Value Eval(const Frame& f) const override {
    const EventInput* e = f.input.event;
    return e == nullptr ? Value::Error(EvalError::kMissing) : Str(e->*member_);
  }

 private:
  std::string_view EventInput::*member_;
};

class InputStringNode final : public Node {
 public:
  explicit InputStringNode(std::string_view Input::*member) : member_(member) {}
  Value Eval(const Frame& f) const override { return Str(f.input.*member_); }

 private:
  std::string_view Input::*member_;
};

class ScoreNode final : public Node {
 public:
  Value Eval(const Frame& f) const override {
    const DetectionInput* d = f.input.detection;
    if (d == nullptr || !d->score.has_value()) return Value::Error(EvalError::kMissing);
    return Value::Double(*d->score);
  }
};

class RelatedNode final : public Node {
 public:
  Value Eval(const Frame& f) const override {
    const DetectionInput* d = f.input.detection;
    if (d == nullptr) return Value::Error(EvalError::kMissing);
    return Value::List(d->related.data(), d->related.size());
  }
};

class MapFieldNode final : public Node {
 public:
  explicit MapFieldNode(bool evidence) : evidence_(evidence) {}
  Value Eval(const Frame& f) const override {
    if (evidence_) {
      if (f.input.detection == nullptr) return Value::Error(EvalError::kMissing);
      return Value::Map(&f.input.detection->evidence);
    }
    if (f.input.event == nullptr) return Value::Error(EvalError::kMissing);
    return Value::Map(&f.input.event->attrs);
  }

 private:
  bool evidence_;
};

// Presence test for has(<schema field>).
class HasFieldNode final : public Node {
 public:
  explicit HasFieldNode(Field field) : field_(field) {}
  Value Eval(const Frame& f) const override {
    const DetectionInput* d = f.input.detection;
    const EventInput* e = f.input.event;
    switch (field_) {
      case Field::kDetectionId:
        return Value::Bool(d && d->id.data());
      case Field::kDetectionSource:
        return Value::Bool(d && d->source.data());
      case Field::kDetectionType:
        return Value::Bool(d && d->type.data());
      case Field::kDetectionScore:
        return Value::Bool(d && d->score.has_value());
      case Field::kDetectionObservedAt:
        return Value::Bool(d && d->observed_at.data());
      case Field::kDetectionEntity:
        return Value::Bool(d && d->entity.data());
      case Field::kDetectionRelated:
      case Field::kDetectionEvidence:
        return Value::Bool(d != nullptr);
      case Field::kEventType:
        return Value::Bool(e && e->type.data());
      case Field::kEventAt:
        return Value::Bool(e && e->at.data());
      case Field::kEventEntity:
        return Value::Bool(e && e->entity.data());
      case Field::kEventAttrs:
        return Value::Bool(e != nullptr);
      case Field::kEntity:
        return Value::Bool(f.input.entity.data() != nullptr);
      case Field::kEntityType:
        return Value::Bool(f.input.entity_type.data() != nullptr);
      case Field::kEntityId:
        return Value::Bool(f.input.entity_id.data() != nullptr);
    }
    return Value::Bool(false);
  }

 private:
  Field field_;
};

// Looks a key up in a map value (or an index in a list value).
Value Lookup(const Value& container, const Value& key) {
  if (container.is_error()) return container;
  if (key.is_error()) return key;
  if (container.kind() == ValueKind::kMap) {
    if (key.kind() != ValueKind::kString) return Value::Error(EvalError::kTypeMismatch);
    const Value* v = container.map_value()->Find(key.string_value());
    return v == nullptr ? Value::Error(EvalError::kMissing) : *v;
  }
  const bool list = container.kind() == ValueKind::kList;
  if (!list && container.kind() != ValueKind::kArray) return Value::Error(EvalError::kTypeMismatch);
  if (key.kind() != ValueKind::kInt) return Value::Error(EvalError::kTypeMismatch);
  const int64_t i = key.int_value();
  const size_t size = list ? container.list_size() : container.array_size();
  if (i < 0 || static_cast<uint64_t>(i) >= size) return Value::Error(EvalError::kMissing);
  return list ? Value::String(container.list_data()[i]) : container.array_data()[i];
}

class SelectKeyNode final : public Node {
 public:
  SelectKeyNode(NodePtr operand, std::string key)
      : operand_(std::move(operand)), key_(std::move(key)) {}
  Value Eval(const Frame& f) const override {
    Value m = operand_->Eval(f);
    if (m.kind() == ValueKind::kMap) {
      const Value* v = m.map_value()->Find(key_);
      return v == nullptr ? Value::Error(EvalError::kMissing) : *v;
    }
    return m.is_error() ? m : Value::Error(EvalError::kTypeMismatch);
  }

 private:
  NodePtr operand_;
  std::string key_;
};

class IndexNode final : public Node {
 public:
  IndexNode(NodePtr operand, NodePtr index)
      : operand_(std::move(operand)), index_(std::move(index)) {}
  Value Eval(const Frame& f) const override {
    Value c = operand_->Eval(f);
    return Lookup(c, index_->Eval(f));
  }

 private:
  NodePtr operand_;
  NodePtr index_;
};

// has(x.key) / has(x["key"]): never an error.
class HasKeyNode final : public Node {
 public:
  HasKeyNode(NodePtr operand, NodePtr key) : operand_(std::move(operand)), key_(std::move(key)) {}
  Value Eval(const Frame& f) const override {
    Value c = operand_->Eval(f);
    if (c.kind() != ValueKind::kMap) return Value::Bool(false);
    Value k = key_->Eval(f);
    if (k.kind() != ValueKind::kString) return Value::Bool(false);
    return Value::Bool(c.map_value()->Find(k.string_value()) != nullptr);
  }

 private:
  NodePtr operand_;
  NodePtr key_;
};

class NotNode final : public Node {
 public:
  explicit NotNode(NodePtr x) : x_(std::move(x)) {}
  Value Eval(const Frame& f) const override {
    Value v = x_->Eval(f);
    if (v.kind() == ValueKind::kBool) return Value::Bool(!v.bool_value());
    return v.is_error() ? v : Value::Error(EvalError::kTypeMismatch);
  }

 private:
  NodePtr x_;
};

class NegNode final : public Node {
 public:
  explicit NegNode(NodePtr x) : x_(std::move(x)) {}
  Value Eval(const Frame& f) const override {
    Value v = x_->Eval(f);
    if (v.kind() == ValueKind::kInt) {
      if (v.int_value() == std::numeric_limits<int64_t>::min()) {
        return Value::Error(EvalError::kOverflow);
      }
      return Value::Int(-v.int_value());
    }
    if (v.kind() == ValueKind::kDouble) return Value::Double(-v.double_value());
    return v.is_error() ? v : Value::Error(EvalError::kTypeMismatch);
  }

 private:
  NodePtr x_;
};

class EqNode final : public Node {
 public:
  EqNode(NodePtr l, NodePtr r, bool negate) : l_(std::move(l)), r_(std::move(r)), negate_(negate) {}
  Value Eval(const Frame& f) const override {
    Value a = l_->Eval(f);
    Value v = Equal(a, r_->Eval(f));
    if (negate_ && v.kind() == ValueKind::kBool) return Value::Bool(!v.bool_value());
    return v;
  }

 private:
  NodePtr l_;
  NodePtr r_;
  bool negate_;
};

// string-typed expression == "literal": the most common shape in policies.
class EqStringConstNode final : public Node {
 public:
  EqStringConstNode(NodePtr l, std::string c, bool negate)
      : l_(std::move(l)), c_(std::move(c)), negate_(negate) {}
  Value Eval(const Frame& f) const override {
    Value a = l_->Eval(f);
    if (a.kind() == ValueKind::kString) {
      return Value::Bool(ShortEqual(a.string_value(), c_) != negate_);
    }
    if (a.is_error()) return a;
    return Value::Bool(negate_);  // a present value of another kind (dyn): unequal
  }

 private:
  NodePtr l_;
  std::string c_;
  bool negate_;
};

class OrderNode final : public Node {
 public:
  OrderNode(Tok op, NodePtr l, NodePtr r) : op_(op), l_(std::move(l)), r_(std::move(r)) {}
  Value Eval(const Frame& f) const override {
    Value a = l_->Eval(f);
    return Order(op_, a, r_->Eval(f));
  }

 private:
  Tok op_;
  NodePtr l_;
  NodePtr r_;
};

// numeric expression <op> numeric literal, compared as doubles (or ints when both are).
class OrderConstNode final : public Node {
 public:
  OrderConstNode(Tok op, NodePtr l, Value c) : op_(op), l_(std::move(l)), c_(c) {}
  Value Eval(const Frame& f) const override {
    Value a = l_->Eval(f);
    if (a.kind() == ValueKind::kInt && c_.kind() == ValueKind::kInt) {
      return Cmp(a.int_value(), c_.int_value());
    }
    if (a.is_number()) return Cmp(a.AsDouble(), c_.AsDouble());  // NaN compares false
    return Order(op_, a, c_);
  }

 private:
  template <typename T>
  Value Cmp(T x, T y) const {
    switch (op_) {
      case Tok::kLt:
        return Value::Bool(x < y);
      case Tok::kLe:
        return Value::Bool(x <= y);
      case Tok::kGt:
        return Value::Bool(x > y);
      default:
        return Value::Bool(x >= y);
    }
  }

  Tok op_;
  NodePtr l_;
  Value c_;
};

class ArithNode final : public Node {
 public:
  ArithNode(Tok op, NodePtr l, NodePtr r) : op_(op), l_(std::move(l)), r_(std::move(r)) {}
  Value Eval(const Frame& f) const override {
    Value a = l_->Eval(f);
    return Arith(op_, a, r_->Eval(f));
  }

 private:
  Tok op_;
  NodePtr l_;
  NodePtr r_;
};

// `to_double`: the checker typed the ?: double (an int branch and a double one), so an
// int result is promoted, as the static type promises: (c ? 1 : 2.5) / 2 is 0.5, not 0.
class TernaryNode final : public Node {
 public:
  TernaryNode(NodePtr c, NodePtr t, NodePtr e, bool to_double)
      : c_(std::move(c)), t_(std::move(t)), e_(std::move(e)), to_double_(to_double) {}
  Value Eval(const Frame& f) const override {
    Value c = c_->Eval(f);
    if (c.kind() != ValueKind::kBool)
      return c.is_error() ? c : Value::Error(EvalError::kTypeMismatch);
    Value v = c.bool_value() ? t_->Eval(f) : e_->Eval(f);
    if (to_double_ && v.kind() == ValueKind::kInt) return Value::Double(v.AsDouble());
    return v;
  }

 private:
  NodePtr c_;
  NodePtr t_;
  NodePtr e_;
  bool to_double_;
};

// x in [e1, e2, ...] with arbitrary elements.
class InElementsNode final : public Node {
 public:
  InElementsNode(NodePtr x, std::vector<NodePtr> elems)
      : x_(std::move(x)), elems_(std::move(elems)) {}
  Value Eval(const Frame& f) const override {
    Value x = x_->Eval(f);
    if (x.is_error()) return x;
    Value err = Value::Bool(false);
    for (const NodePtr& e : elems_) {
      Value eq = Equal(x, e->Eval(f));
      if (eq.kind() == ValueKind::kBool) {
        if (eq.bool_value()) return eq;
      } else if (!err.is_error()) {
        err = eq;
      }
    }
    return err;
  }

 private:
  NodePtr x_;
  std::vector<NodePtr> elems_;
};

// x in ["literal", ...]: a linear scan for short lists, a hash set for long ones.
class InStringsNode final : public Node {
 public:
  InStringsNode(NodePtr x, std::vector<std::string> items)
      : x_(std::move(x)), items_(std::move(items)) {
    if (items_.size() > 8) set_.insert(items_.begin(), items_.end());
  }
  Value Eval(const Frame& f) const override {
    Value x = x_->Eval(f);
    if (x.kind() != ValueKind::kString) {
      return x.is_error() ? x : Value::Bool(false);
    }
    std::string_view s = x.string_value();
    if (!set_.empty()) return Value::Bool(set_.contains(s));
    for (const std::string& item : items_) {
      if (ShortEqual(item, s)) return Value::Bool(true);
    }
    return Value::Bool(false);
  }

 private:
  NodePtr x_;
  std::vector<std::string> items_;
  absl::flat_hash_set<std::string_view> set_;  // views into items_
};

// x in [items]: == item by item; true if one is, else the first error, else false.
Value InValues(const Value& x, const Value* items, size_t n) {
  Value err = Value::Bool(false);
  for (size_t i = 0; i < n; ++i) {
    Value eq = Equal(x, items[i]);
    if (eq.kind() == ValueKind::kBool) {
      if (eq.bool_value()) return eq;
    } else if (!err.is_error()) {
      err = eq;
    }
  }
  return err;
}

// x in <list or map value>.
class InValueNode final : public Node {
 public:
  InValueNode(NodePtr x, NodePtr container) : x_(std::move(x)), c_(std::move(container)) {}
  Value Eval(const Frame& f) const override {
    Value x = x_->Eval(f);
    Value c = c_->Eval(f);
    if (x.is_error()) return x;
    if (c.is_error()) return c;
    if (c.kind() == ValueKind::kList) {
      if (x.kind() != ValueKind::kString) return Value::Bool(false);
      for (size_t i = 0; i < c.list_size(); ++i) {
        if (c.list_data()[i] == x.string_value()) return Value::Bool(true);
      }
      return Value::Bool(false);
    }
    if (c.kind() == ValueKind::kArray) return InValues(x, c.array_data(), c.array_size());
    if (c.kind() == ValueKind::kMap) {
      if (x.kind() != ValueKind::kString) return Value::Error(EvalError::kTypeMismatch);
      return Value::Bool(c.map_value()->Find(x.string_value()) != nullptr);
    }
    return Value::Error(EvalError::kTypeMismatch);
  }

 private:
  NodePtr x_;
  NodePtr c_;
};

class SizeNode final : public Node {
 public:
  explicit SizeNode(NodePtr x) : x_(std::move(x)) {}
  Value Eval(const Frame& f) const override {
    Value v = x_->Eval(f);
    switch (v.kind()) {
      case ValueKind::kString:
        return Value::Int(CodePoints(v.string_value()));
      case ValueKind::kList:
        return Value::Int(static_cast<int64_t>(v.list_size()));
      case ValueKind::kArray:
        return Value::Int(static_cast<int64_t>(v.array_size()));
      case ValueKind::kMap:
        return Value::Int(static_cast<int64_t>(v.map_value()->size));
      case ValueKind::kError:
        return v;
      default:
        return Value::Error(EvalError::kTypeMismatch);
    }
  }

 private:
  NodePtr x_;
};

enum class StrOp : uint8_t { kStartsWith, kEndsWith, kContains };

class StringMethodNode final : public Node {
 public:
  StringMethodNode(StrOp op, NodePtr target, NodePtr arg)
      : op_(op), target_(std::move(target)), arg_(std::move(arg)) {}
  Value Eval(const Frame& f) const override {
    Value t = target_->Eval(f);
    Value a = arg_->Eval(f);
    if (t.is_error()) return t;
    if (a.is_error()) return a;
    if (t.kind() != ValueKind::kString || a.kind() != ValueKind::kString) {
      return Value::Error(EvalError::kTypeMismatch);
    }
    std::string_view s = t.string_value();
    std::string_view x = a.string_value();
    switch (op_) {
      case StrOp::kStartsWith:
        return Value::Bool(s.substr(0, x.size()) == x);
      case StrOp::kEndsWith:
        return Value::Bool(s.size() >= x.size() && s.substr(s.size() - x.size()) == x);
      case StrOp::kContains:
        return Value::Bool(s.find(x) != std::string_view::npos);
    }
    return Value::Bool(false);
  }

 private:
  StrOp op_;
  NodePtr target_;
  NodePtr arg_;
};

class MatchesNode final : public Node {
 public:
  MatchesNode(NodePtr target, std::unique_ptr<RE2> re)
      : target_(std::move(target)), re_(std::move(re)) {}
  Value Eval(const Frame& f) const override {
    Value t = target_->Eval(f);
    if (t.kind() != ValueKind::kString) {
      return t.is_error() ? t : Value::Error(EvalError::kTypeMismatch);
    }
    std::string_view s = t.string_value();
    return Value::Bool(RE2::PartialMatch(re2::StringPiece(s.data(), s.size()), *re_));
  }

 private:
  NodePtr target_;
  std::unique_ptr<RE2> re_;
};

class InCidrNode final : public Node {
 public:
  InCidrNode(NodePtr ip, IpNetwork net) : ip_(std::move(ip)), net_(net) {}
  Value Eval(const Frame& f) const override {
    Value v = ip_->Eval(f);
    if (v.kind() != ValueKind::kString) {
      return v.is_error() ? v : Value::Error(EvalError::kTypeMismatch);
    }
    std::optional<IpAddress> a = ParseIp(v.string_value());
    if (!a.has_value()) return Value::Error(EvalError::kInvalidArgument);
    return Value::Bool(net_.Contains(*a));
  }

 private:
  NodePtr ip_;
  IpNetwork net_;
};

// A string argument for an Environment call: error and type checks.
inline bool StringArg(const Value& v, Value* err) {
  if (v.kind() == ValueKind::kString) return true;
  *err = v.is_error() ? v : Value::Error(EvalError::kTypeMismatch);
  return false;
}

class CounterNode final : public Node {
 public:
  CounterNode(bool distinct, std::string counter, NodePtr key, absl::Duration window)
      : distinct_(distinct), counter_(std::move(counter)), key_(std::move(key)), window_(window) {}
  Value Eval(const Frame& f) const override {
    Value k = key_->Eval(f);
    if (k.is_error()) return k;
    // A counter keyed on an attribute counts a number or a boolean by its text (as
    // POST /v1/events keys it: routes_events.cc): count() reads it the same way.
    std::string text;
    std::string_view key;
    switch (k.kind()) {
      case ValueKind::kString:
        key = k.string_value();
        break;
      case ValueKind::kInt:  // as the event's number was counted (routes_events.cc)
        text = core::NumberKeyText(k.int_value());
        key = text;
        break;
      case ValueKind::kDouble:
        text = core::NumberKeyText(k.double_value());
        key = text;
        break;
      case ValueKind::kBool:
        key = k.bool_value() ? "true" : "false";
        break;
      default:
        return Value::Error(EvalError::kTypeMismatch);
    }
    return Value::Int(distinct_ ? f.env.Distinct(counter_, key, window_)
                                : f.env.Count(counter_, key, window_));
  }

 private:
  bool distinct_;
  std::string counter_;
  NodePtr key_;
  absl::Duration window_;
};

class InListNode final : public Node {
 public:
  InListNode(std::string list, NodePtr entity)
      : list_(std::move(list)), entity_(std::move(entity)) {}
  Value Eval(const Frame& f) const override {
    Value e = entity_->Eval(f);
    Value err;
    if (!StringArg(e, &err)) return err;
    return Value::Bool(f.env.InList(list_, e.string_value()));
  }

 private:
  std::string list_;
  NodePtr entity_;
};

class ActiveNode final : public Node {
 public:
  ActiveNode(NodePtr entity, std::string action)
      : entity_(std::move(entity)), action_(std::move(action)) {}
  Value Eval(const Frame& f) const override {
    Value e = entity_->Eval(f);
    Value err;
    if (!StringArg(e, &err)) return err;
    return Value::Bool(f.env.Active(e.string_value(), action_));
  }

 private:
  NodePtr entity_;
  std::string action_;
};

class PriorNode final : public Node {
 public:
  PriorNode(NodePtr entity, std::string action, absl::Duration window)
      : entity_(std::move(entity)), action_(std::move(action)), window_(window) {}
  Value Eval(const Frame& f) const override {
    Value e = entity_->Eval(f);
    Value err;
    if (!StringArg(e, &err)) return err;
    return Value::Int(f.env.Prior(e.string_value(), action_, window_));
  }

 private:
  NodePtr entity_;
  std::string action_;
  absl::Duration window_;
};

// A string field read without a virtual call (for the fused nodes below).
struct StringField {
  enum class Src : uint8_t { kDetection, kEvent, kInput };
  Src src = Src::kInput;
  std::string_view DetectionInput::*det = nullptr;
  std::string_view EventInput::*ev = nullptr;
  std::string_view Input::*in = nullptr;

  // nullptr when the field (or its record) is absent.
  const std::string_view* Get(const Input& input) const {
    const std::string_view* p;
    switch (src) {
      case Src::kDetection:
        if (input.detection == nullptr) return nullptr;
        p = &(input.detection->*det);
        break;
      case Src::kEvent:
        if (input.event == nullptr) return nullptr;
        p = &(input.event->*ev);
        break;
      default:
        p = &(input.*in);
    }
    return p->data() == nullptr ? nullptr : p;
  }
};

std::optional<StringField> StringFieldOf(Field f) {
  StringField s;
  s.src = StringField::Src::kDetection;
  switch (f) {
    case Field::kDetectionId:
      s.det = &DetectionInput::id;
      return s;
    case Field::kDetectionSource:
      s.det = &DetectionInput::source;
      return s;
    case Field::kDetectionType:
      s.det = &DetectionInput::type;
      return s;
    case Field::kDetectionObservedAt:
      s.det = &DetectionInput::observed_at;
      return s;
    case Field::kDetectionEntity:
      s.det = &DetectionInput::entity;
      return s;
    default:
      break;
  }
  s.src = StringField::Src::kEvent;
  switch (f) {
    case Field::kEventType:
      s.ev = &EventInput::type;
      return s;
    case Field::kEventAt:
      s.ev = &EventInput::at;
      return s;
    case Field::kEventEntity:
      s.ev = &EventInput::entity;
      return s;
    default:
      break;
  }
  s.src = StringField::Src::kInput;
  switch (f) {
    case Field::kEntity:
      s.in = &Input::entity;
      return s;
    case Field::kEntityType:
      s.in = &Input::entity_type;
      return s;
    case Field::kEntityId:
      s.in = &Input::entity_id;
      return s;
    default:
      return std::nullopt;
  }
}

// string field == "literal", fused.
class FieldEqConstNode final : public Node {
 public:
  FieldEqConstNode(StringField field, std::string c, bool negate)
      : field_(field), c_(std::move(c)), negate_(negate) {}
  Value Eval(const Frame& f) const override {
    const std::string_view* s = field_.Get(f.input);
    if (s == nullptr) return Value::Error(EvalError::kMissing);
    return Value::Bool(ShortEqual(*s, c_) != negate_);
  }

 private:
  StringField field_;
  std::string c_;
  bool negate_;
};

// string field in ["literal", ...], fused.
class FieldInStringsNode final : public Node {
 public:
  FieldInStringsNode(StringField field, std::vector<std::string> items)
      : field_(field), items_(std::move(items)) {
    if (items_.size() > 8) set_.insert(items_.begin(), items_.end());
  }
  Value Eval(const Frame& f) const override {
    const std::string_view* s = field_.Get(f.input);
    if (s == nullptr) return Value::Error(EvalError::kMissing);
    if (!set_.empty()) return Value::Bool(set_.contains(*s));
    for (const std::string& item : items_) {
      if (ShortEqual(item, *s)) return Value::Bool(true);
    }
    return Value::Bool(false);
  }

 private:
  StringField field_;
  std::vector<std::string> items_;
  absl::flat_hash_set<std::string_view> set_;
};

// detection.score <op> number, fused.
class ScoreOrderNode final : public Node {
 public:
  ScoreOrderNode(Tok op, double c) : op_(op), c_(c) {}
  Value Eval(const Frame& f) const override {
    const DetectionInput* d = f.input.detection;
    if (d == nullptr || !d->score.has_value()) return Value::Error(EvalError::kMissing);
    double x = *d->score;
    switch (op_) {
      case Tok::kLt:
        return Value::Bool(x < c_);
      case Tok::kLe:
        return Value::Bool(x <= c_);
      case Tok::kGt:
        return Value::Bool(x > c_);
      default:
        return Value::Bool(x >= c_);
    }
  }

 private:
  Tok op_;
  double c_;
};

// x in [literal, ...] for non-string literal lists: no virtual call per element.
class InConstValuesNode final : public Node {
 public:
  InConstValuesNode(NodePtr x, std::vector<Value> items)
      : x_(std::move(x)), items_(std::move(items)) {}
  Value Eval(const Frame& f) const override {
    Value x = x_->Eval(f);
    if (x.is_error()) return x;
    return InValues(x, items_.data(), items_.size());  // literals: never an error
  }

 private:
  NodePtr x_;
  std::vector<Value> items_;  // no strings: they would need owned storage
};

// A flattened chain of && (or ||) with CEL's commutative semantics: the result is false
// (true for ||) if any operand is, else the first error, else true (false). Because the
// outcome does not depend on the order, the builder puts cheap operands first.
// Operands of the commonest shapes (string field ==/!= literal, detection.score <op>
// number) are tested inline, before the others, without a virtual call.
struct InlineTest {
  enum class Kind : uint8_t { kFieldEq, kScore };
  Kind kind = Kind::kFieldEq;
  bool negate = false;  // kFieldEq: != instead of ==
  Tok op = Tok::kGe;    // kScore
  StringField field;    // kFieldEq
  std::string text;     // kFieldEq
  double number = 0;    // kScore

  // 1 true, 0 false, -1 missing.
  int Test(const Input& in) const {
    if (kind == Kind::kFieldEq) {
      const std::string_view* s = field.Get(in);
      if (s == nullptr) return -1;
      return ShortEqual(*s, text) != negate;
    }
    const DetectionInput* d = in.detection;
    if (d == nullptr || !d->score.has_value()) return -1;
    double x = *d->score;
    switch (op) {
      case Tok::kLt:
        return x < number;
      case Tok::kLe:
        return x <= number;
      case Tok::kGt:
        return x > number;
      default:
        return x >= number;
    }
  }
};

template <bool kIsAnd>
class LogicChainNode final : public Node {
 public:
  LogicChainNode(std::vector<InlineTest> tests, std::vector<NodePtr> ops)
      : tests_(std::move(tests)), ops_(std::move(ops)) {}
  Value Eval(const Frame& f) const override {
    Value err = Value::Bool(kIsAnd);
    for (const InlineTest& t : tests_) {
      int r = t.Test(f.input);
      if (r == static_cast<int>(!kIsAnd)) return Value::Bool(!kIsAnd);
      if (r < 0 && !err.is_error()) err = Value::Error(EvalError::kMissing);
    }
    for (const NodePtr& op : ops_) {
      Value v = op->Eval(f);
      if (v.kind() == ValueKind::kBool) {
        if (v.bool_value() != kIsAnd) return v;
      } else if (!err.is_error()) {
        err = v.is_error() ? v : Value::Error(EvalError::kTypeMismatch);
      }
    }
    return err;
  }

 private:
  std::vector<InlineTest> tests_;
  std::vector<NodePtr> ops_;
};

// Rough static cost of evaluating `e`, used only to order && / || operands.
int Cost(const Expr& e) {
  int c = 1;
  for (const auto& a : e.args) c += Cost(*a);
  switch (e.kind) {
    case ExprKind::kSelect:
    case ExprKind::kIndex:
      if (e.field < 0) c += 4;  // map lookup
      break;
    case ExprKind::kCall:
      if (e.name == "matches") c += 50;
      if (e.name == "in_cidr") c += 15;
      if (e.name == "count" || e.name == "distinct" || e.name == "in_list" || e.name == "active" ||
          e.name == "prior") {
        c += 30;
      }
      break;
    case ExprKind::kMethod:
      c += e.name == "matches" ? 50 : 4;
      break;
    default:
      break;
  }
  return c;
}

// detection.evidence.KEY / event.attrs.KEY, fused: no virtual call for the map itself.
class MapKeyNode final : public Node {
 public:
  MapKeyNode(bool evidence, std::string key) : evidence_(evidence), key_(std::move(key)) {}
  Value Eval(const Frame& f) const override {
    const MapView* m;
    if (evidence_) {
      if (f.input.detection == nullptr) return Value::Error(EvalError::kMissing);
      m = &f.input.detection->evidence;
    } else {
      if (f.input.event == nullptr) return Value::Error(EvalError::kMissing);
      m = &f.input.event->attrs;
    }
    const Value* v = m->Find(key_);
    return v == nullptr ? Value::Error(EvalError::kMissing) : *v;
  }

 private:
  bool evidence_;
  std::string key_;
};

// has(x.KEY) with a literal key.
class HasConstKeyNode final : public Node {
 public:
  HasConstKeyNode(NodePtr operand, std::string key)
      : operand_(std::move(operand)), key_(std::move(key)) {}
  Value Eval(const Frame& f) const override {
    Value c = operand_->Eval(f);
    if (c.kind() != ValueKind::kMap) return Value::Bool(false);
    return Value::Bool(c.map_value()->Find(key_) != nullptr);
  }

 private:
  NodePtr operand_;
  std::string key_;
};

class Builder {
 public:
  explicit Builder(const Declarations& decls) : decls_(decls) {}

  NodePtr Build(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kNull:
        return std::make_unique<ConstNode>(Value::Null());
      case ExprKind::kBool:
        return std::make_unique<ConstNode>(Value::Bool(e.bool_value));
      case ExprKind::kInt:
        return std::make_unique<ConstNode>(Value::Int(e.int_value));
      case ExprKind::kDouble:
        return std::make_unique<ConstNode>(Value::Double(e.double_value));
      case ExprKind::kString:
        return std::make_unique<ConstNode>(e.name);
      case ExprKind::kIdent:
        return BuildField(Field::kEntity);
      case ExprKind::kSelect:
        if (e.field >= 0) return BuildField(static_cast<Field>(e.field));
        if (int m = e.args[0]->field; m == static_cast<int>(Field::kDetectionEvidence) ||
                                      m == static_cast<int>(Field::kEventAttrs)) {
          return std::make_unique<MapKeyNode>(m == static_cast<int>(Field::kDetectionEvidence),
                                              e.name);
        }
        return std::make_unique<SelectKeyNode>(Build(*e.args[0]), e.name);
      case ExprKind::kIndex:
        return std::make_unique<IndexNode>(Build(*e.args[0]), Build(*e.args[1]));
      case ExprKind::kUnary:
        if (e.op == Tok::kNot) return std::make_unique<NotNode>(Build(*e.args[0]));
        return std::make_unique<NegNode>(Build(*e.args[0]));
      case ExprKind::kBinary:
        return BuildBinary(e);
      case ExprKind::kTernary:
        return std::make_unique<TernaryNode>(Build(*e.args[0]), Build(*e.args[1]),
                                             Build(*e.args[2]), e.type == Type::kDouble);
      case ExprKind::kList:
        break;  // only under `in` and size(), handled there
      case ExprKind::kCall:
        return BuildCall(e);
      case ExprKind::kMethod:
        return BuildMethod(e);
    }
    QUELL_CHECK(false && "unreachable: list literal outside in/size");
    return nullptr;
  }

 private:
  NodePtr BuildField(Field f) {
    switch (f) {
      case Field::kDetectionId:
        return std::make_unique<DetectionStringNode>(&DetectionInput::id);
      case Field::kDetectionSource:
        return std::make_unique<DetectionStringNode>(&DetectionInput::source);
      case Field::kDetectionType:
        return std::make_unique<DetectionStringNode>(&DetectionInput::type);
      case Field::kDetectionScore:
        return std::make_unique<ScoreNode>();
      case Field::kDetectionObservedAt:
        return std::make_unique<DetectionStringNode>(&DetectionInput::observed_at);
      case Field::kDetectionEntity:
        return std::make_unique<DetectionStringNode>(&DetectionInput::entity);
      case Field::kDetectionRelated:
        return std::make_unique<RelatedNode>();
      case Field::kDetectionEvidence:
        return std::make_unique<MapFieldNode>(true);
      case Field::kEventType:
        return std::make_unique<EventStringNode>(&EventInput::type);
      case Field::kEventAt:
        return std::make_unique<EventStringNode>(&EventInput::at);
      case Field::kEventEntity:
        return std::make_unique<EventStringNode>(&EventInput::entity);
      case Field::kEventAttrs:
        return std::make_unique<MapFieldNode>(false);
      case Field::kEntity:
        return std::make_unique<InputStringNode>(&Input::entity);
      case Field::kEntityType:
        return std::make_unique<InputStringNode>(&Input::entity_type);
      case Field::kEntityId:
        return std::make_unique<InputStringNode>(&Input::entity_id);
    }
    return nullptr;
  }

  static bool IsNumericLiteral(const Expr& e) {
    return e.kind == ExprKind::kInt || e.kind == ExprKind::kDouble;
  }

  NodePtr BuildBinary(const Expr& e) {
    const Expr& l = *e.args[0];
    const Expr& r = *e.args[1];
    switch (e.op) {
      case Tok::kAnd:
      case Tok::kOr: {
        std::vector<const Expr*> operands;
        Flatten(e, e.op, &operands);
        std::stable_sort(operands.begin(), operands.end(),
                         [](const Expr* a, const Expr* b) { return Cost(*a) < Cost(*b); });
        std::vector<InlineTest> tests;
        std::vector<NodePtr> ops;
        for (const Expr* x : operands) {
          if (std::optional<InlineTest> t = AsInlineTest(*x)) {
            tests.push_back(std::move(*t));
          } else {
            ops.push_back(Build(*x));
          }
        }
        if (e.op == Tok::kAnd) {
          return std::make_unique<LogicChainNode<true>>(std::move(tests), std::move(ops));
        }
        return std::make_unique<LogicChainNode<false>>(std::move(tests), std::move(ops));
      }
      case Tok::kEq:
      case Tok::kNe: {
        bool negate = e.op == Tok::kNe;
        const Expr* field = r.kind == ExprKind::kString ? &l : &r;
        const Expr* lit = r.kind == ExprKind::kString ? &r : &l;
        if (lit->kind == ExprKind::kString && field->field >= 0) {
          if (auto sf = StringFieldOf(static_cast<Field>(field->field))) {
            return std::make_unique<FieldEqConstNode>(*sf, lit->name, negate);
          }
        }
        if (r.kind == ExprKind::kString && l.kind != ExprKind::kString) {
          return std::make_unique<EqStringConstNode>(Build(l), r.name, negate);
        }
        if (l.kind == ExprKind::kString && r.kind != ExprKind::kString) {
          return std::make_unique<EqStringConstNode>(Build(r), l.name, negate);
        }
        return std::make_unique<EqNode>(Build(l), Build(r), negate);
      }
      case Tok::kLt:
      case Tok::kLe:
      case Tok::kGt:
      case Tok::kGe:
        if (IsNumericLiteral(r) && l.field == static_cast<int>(Field::kDetectionScore)) {
          return std::make_unique<ScoreOrderNode>(
              e.op, r.kind == ExprKind::kInt ? static_cast<double>(r.int_value) : r.double_value);
        }
        if (IsNumericLiteral(r)) {
          Value c =
              r.kind == ExprKind::kInt ? Value::Int(r.int_value) : Value::Double(r.double_value);
          return std::make_unique<OrderConstNode>(e.op, Build(l), c);
        }
        return std::make_unique<OrderNode>(e.op, Build(l), Build(r));
      case Tok::kIn:
        return BuildIn(e);
      default:
        return std::make_unique<ArithNode>(e.op, Build(l), Build(r));
    }
  }

  static std::optional<InlineTest> AsInlineTest(const Expr& e) {
    if (e.kind != ExprKind::kBinary) return std::nullopt;
    const Expr& l = *e.args[0];
    const Expr& r = *e.args[1];
    InlineTest t;
    if (e.op == Tok::kEq || e.op == Tok::kNe) {
      const Expr* field = r.kind == ExprKind::kString ? &l : &r;
      const Expr* lit = r.kind == ExprKind::kString ? &r : &l;
      if (lit->kind != ExprKind::kString || field->field < 0) return std::nullopt;
      std::optional<StringField> sf = StringFieldOf(static_cast<Field>(field->field));
      if (!sf.has_value()) return std::nullopt;
      t.kind = InlineTest::Kind::kFieldEq;
      t.field = *sf;
      t.text = lit->name;
      t.negate = e.op == Tok::kNe;
      return t;
    }
    if ((e.op == Tok::kLt || e.op == Tok::kLe || e.op == Tok::kGt || e.op == Tok::kGe) &&
        l.field == static_cast<int>(Field::kDetectionScore) && IsNumericLiteral(r)) {
      t.kind = InlineTest::Kind::kScore;
      t.op = e.op;
      t.number = r.kind == ExprKind::kInt ? static_cast<double>(r.int_value) : r.double_value;
      return t;
    }
    return std::nullopt;
  }

  static void Flatten(const Expr& e, Tok op, std::vector<const Expr*>* out) {
    if (e.kind == ExprKind::kBinary && e.op == op) {
      Flatten(*e.args[0], op, out);
      Flatten(*e.args[1], op, out);
    } else {
      out->push_back(&e);
    }
  }

  NodePtr BuildIn(const Expr& e) {
    const Expr& l = *e.args[0];
    const Expr& r = *e.args[1];
    if (r.kind != ExprKind::kList) return std::make_unique<InValueNode>(Build(l), Build(r));
    bool all_strings = std::all_of(r.args.begin(), r.args.end(),
                                   [](const auto& a) { return a->kind == ExprKind::kString; });
    if (all_strings && !r.args.empty()) {
      std::vector<std::string> items;
      for (const auto& a : r.args) items.push_back(a->name);
      if (l.field >= 0) {
        if (auto sf = StringFieldOf(static_cast<Field>(l.field))) {
          return std::make_unique<FieldInStringsNode>(*sf, std::move(items));
        }
      }
      return std::make_unique<InStringsNode>(Build(l), std::move(items));
    }
    bool all_scalar_literals = std::all_of(r.args.begin(), r.args.end(), [](const auto& a) {
      return a->kind == ExprKind::kInt || a->kind == ExprKind::kDouble ||
             a->kind == ExprKind::kBool;
    });
    if (all_scalar_literals) {
      std::vector<Value> items;
      for (const auto& a : r.args) {
        items.push_back(a->kind == ExprKind::kInt      ? Value::Int(a->int_value)
                        : a->kind == ExprKind::kDouble ? Value::Double(a->double_value)
                                                       : Value::Bool(a->bool_value));
      }
      return std::make_unique<InConstValuesNode>(Build(l), std::move(items));
    }
    std::vector<NodePtr> elems;
    for (const auto& a : r.args) elems.push_back(Build(*a));
    return std::make_unique<InElementsNode>(Build(l), std::move(elems));
  }

  NodePtr BuildHas(const Expr& a) {
    if (a.kind == ExprKind::kSelect && a.field >= 0) {
      return std::make_unique<HasFieldNode>(static_cast<Field>(a.field));
    }
    if (a.kind == ExprKind::kSelect) {
      return std::make_unique<HasConstKeyNode>(Build(*a.args[0]), a.name);
    }
    return std::make_unique<HasKeyNode>(Build(*a.args[0]), Build(*a.args[1]));
  }

  NodePtr BuildSize(const Expr& a) {
    if (a.kind == ExprKind::kList) {
      return std::make_unique<ConstNode>(Value::Int(static_cast<int64_t>(a.args.size())));
    }
    return std::make_unique<SizeNode>(Build(a));
  }

  NodePtr BuildMatches(const Expr& target, const Expr& pattern) {
    std::string err;
    std::unique_ptr<RE2> re = CompileRegex(pattern.name, &err);
    QUELL_CHECK(re != nullptr);
    return std::make_unique<MatchesNode>(Build(target), std::move(re));
  }

  NodePtr BuildCall(const Expr& e) {
    const std::string& n = e.name;
    if (n == "has") return BuildHas(*e.args[0]);
    if (n == "size") return BuildSize(*e.args[0]);
    if (n == "matches") return BuildMatches(*e.args[0], *e.args[1]);
    if (n == "in_cidr") {
      std::string err;
      std::optional<IpNetwork> net = ParseNetwork(e.args[1]->name, &err);
      QUELL_CHECK(net.has_value());
      return std::make_unique<InCidrNode>(Build(*e.args[0]), *net);
    }
    if (n == "count" || n == "distinct") {
      std::optional<absl::Duration> w = ParseWindow(e.args[2]->name);
      QUELL_CHECK(w.has_value());
      return std::make_unique<CounterNode>(n == "distinct", e.args[0]->name, Build(*e.args[1]), *w);
    }
    if (n == "in_list") return std::make_unique<InListNode>(e.args[0]->name, Build(*e.args[1]));
    if (n == "active") return std::make_unique<ActiveNode>(Build(*e.args[0]), e.args[1]->name);
    if (n == "prior") {
      std::optional<absl::Duration> w = ParseWindow(e.args[2]->name);
      QUELL_CHECK(w.has_value());
      return std::make_unique<PriorNode>(Build(*e.args[0]), e.args[1]->name, *w);
    }
    QUELL_CHECK(false && "unreachable: unknown function after checking");
    return nullptr;
  }

  NodePtr BuildMethod(const Expr& e) {
    const std::string& n = e.name;
    if (n == "size") return BuildSize(*e.args[0]);
    if (n == "matches") return BuildMatches(*e.args[0], *e.args[1]);
    StrOp op = n == "startsWith" ? StrOp::kStartsWith
               : n == "endsWith" ? StrOp::kEndsWith
                                 : StrOp::kContains;
    return std::make_unique<StringMethodNode>(op, Build(*e.args[0]), Build(*e.args[1]));
  }

  const Declarations& decls_;
};

}  // namespace

std::unique_ptr<const Node> Build(const Expr& root, const Declarations& decls) {
  return Builder(decls).Build(root);
}

}  // namespace quell::policy::internal
