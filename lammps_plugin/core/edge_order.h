// What vivace's operators share about a graph's edges: their order by one end, and index range checks.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace vivace {

// Edges sorted by one of their ends (a counting sort: stable, O(edges + nodes)), and where each node's edges
// start in that order.
struct EdgesByNode {
  std::vector<int64_t> edges;
  std::vector<int64_t> start;  // (nodes + 1)
};

inline EdgesByNode edges_by_node(const int64_t* node, int64_t num_edges, int64_t num_nodes) {
  EdgesByNode order;
  order.start.assign(num_nodes + 1, 0);
  for (int64_t e = 0; e < num_edges; ++e) ++order.start[node[e] + 1];
  std::partial_sum(order.start.begin(), order.start.end(), order.start.begin());
  order.edges.resize(num_edges);
  std::vector<int64_t> next(order.start.begin(), order.start.end() - 1);
  for (int64_t e = 0; e < num_edges; ++e) order.edges[next[node[e]]++] = e;
  return order;
}

// Refuses, naming the operator and the index, any of `count` indices outside [0, bound).
inline void check_index_range(const char* op, const int64_t* index, int64_t count, int64_t bound, const char* what,
                              const char* of) {
  if (count == 0) return;
  const auto [lo, hi] = std::minmax_element(index, index + count);
  TORCH_CHECK(*lo >= 0 && *hi < bound, op, ": ", what, " index ", *lo < 0 ? *lo : *hi, " out of range for ", bound,
              " ", of);
}

}  // namespace vivace
