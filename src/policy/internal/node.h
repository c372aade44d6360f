// The evaluation form of a compiled expression: a closure tree.
//
// Each AST node compiles to a Node whose virtual Eval() computes a Value. Nodes are
// specialised at compile time (static types are known), own their constants, and never
// allocate while evaluating. A small bytecode VM over a fixed value stack was the
// alternative considered; the closure tree was chosen because it needs no stack-depth
// bookkeeping, short-circuits && / || / ?: naturally, and its measured cost for the
// benchmark condition is far below the 200 ns budget (see policy_bench.cc); the VM was not
// built, so the two were not compared head to head.
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
