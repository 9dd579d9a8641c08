#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace isthmus {

// Frees a string's memory (clear() and assigning "" keep the capacity).
inline void release(std::string& s) { std::string().swap(s); }

char ascii_lower(char c);
std::string ascii_lowercase(std::string_view s);
std::string ascii_uppercase(std::string_view s);
bool iequals(std::string_view a, std::string_view b);
bool istarts_with(std::string_view s, std::string_view prefix);
std::string_view trim(std::string_view s);

// RFC 4648 base64 with padding. decode_base64 is strict: it refuses
// characters outside the alphabet, bad padding and whitespace.
std::string encode_base64(std::string_view raw);
std::optional<std::string> decode_base64(std::string_view text);

}  // namespace isthmus
