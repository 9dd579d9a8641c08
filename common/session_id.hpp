#pragma once
#include <string>

namespace isthmus {

// A short random identifier for one session (12 characters of base32,
// 60 bits): it appears on every log line of the session and, later, in the
// admin API, so an operator can follow one connection across both.
std::string new_session_id();

}  // namespace isthmus
