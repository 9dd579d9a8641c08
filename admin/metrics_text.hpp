#pragma once
// GET /metrics: the sessions' counters (proxy/metrics.hpp) plus what is read
// from the running snapshot when scraped: per node sessions, health,
// draining and role; per island role epoch; the directory cache; the
// config generation. Prometheus text exposition format 0.0.4; every label
// set bounded by the config (islands, nodes, protocols, results).

#include "proxy/runtime.hpp"

#include <string>

namespace isthmus::admin {

std::string render_metrics(const proxy::Runtime& runtime, std::string_view version);

}  // namespace isthmus::admin
