// Numbers as text, where one number must always give the same text: a velocity counter's
// key or distinct value is the text of the number an event carries, and a policy's
// count()/distinct() reads it back by the text of the number it computed.
//
// Thread-safety: pure functions.
#ifndef QUELL_CORE_NUMBER_TEXT_H_
#define QUELL_CORE_NUMBER_TEXT_H_

#include <cstdint>
#include <string>

namespace quell::core {

//! A number's key text: an integer in int64 as its digits; any other number (an unsigned
//! integer past int64 is read as a double by the policy engine, so it is passed as one)
//! as the shortest text that reads back as it ("12.5", "1234567.5", "12" for 12.0).
//! absl::StrCat(double) keeps 6 significant digits, so 12345.67 and 12345.68 were one
//! distinct amount. Non-finite values: "nan", "inf", "-inf".
std::string NumberKeyText(int64_t i);
std::string NumberKeyText(double d);

}  // namespace quell::core

#endif  // QUELL_CORE_NUMBER_TEXT_H_
