// The evaluation form of a compiled expression: a closure tree.
//
// Each AST node compiles to a Node whose virtual Eval() computes a 16-byte Value (returned
// in registers). Nodes are specialised at compile time from the static types, own their
// constants, and never allocate while evaluating. && / || chains are flattened, cheap
// operands first (legal because CEL's && / || are commutative), and the commonest
// operands (string field == literal, detection.score <op> number) are tested inline in the
// chain without a virtual call.
//
// A bytecode VM over a fixed value stack was the alternative. policy_bench measures the
// reference condition both ways: the closure tree at ~15.6 ns of CPU per evaluation versus
// ~25.2 ns for a switch-dispatched VM hand-assembled for the same condition with the same
// semantics (BM_SingleConditionBytecodeSketch). The closure tree also makes
// short-circuiting and per-shape specialisation simple, so it is what Program uses.
//
// Thread-safety: immutable after construction; Eval() is const and reentrant.
#ifndef QUELL_POLICY_INTERNAL_NODE_H_
#define QUELL_POLICY_INTERNAL_NODE_H_

#include "policy/expr.h"
#include "policy/value.h"

namespace quell::policy::internal {

struct Frame {
  const Input& input;
  Environment& env;
};

class Node {
 public:
  virtual ~Node() = default;
  virtual Value Eval(const Frame& f) const = 0;
};

}  // namespace quell::policy::internal

#endif  // QUELL_POLICY_INTERNAL_NODE_H_
