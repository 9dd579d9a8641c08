#pragma once
// A bound on JSON nesting, checked before a recursive parser sees the text:
// nlohmann::json's parser (and whatever walks its result) recurses once per
// level, and grows its stacks before a callback could refuse a level.

#include <string_view>

namespace isthmus {

// Whether `text` nests arrays and objects at most `max_depth` deep (counted
// outside strings; not a validation: the parser still decides).
bool json_nesting_within(std::string_view text, int max_depth);

}  // namespace isthmus
