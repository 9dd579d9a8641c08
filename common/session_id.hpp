#pragma once
#include <string>

namespace isthmus {

// A short random identifier for one session (12 characters of base32,
// 60 bits): it appears on every log line of the session and, later, in the
// admin API, so an operator can follow one connection across both.
std::string new_session_id();

// A random token for this process, the same for its whole life: it appears
// in this instance's LMTP greeting, so that the instance recognises itself
// when a node address points back at it (a loop in the config).
const std::string& instance_token();

}  // namespace isthmus
