// vivace::channelwise_tp: Allegro's channel-wise tensor product of edge features with the density of each
// edge's center, fused with the gather of that density,
//
//     out[e, k, c] = sum_q coef[q, c] x[e, m_q, c] y[center[e], n_q, c]      q over the entries (k_q, m_q, n_q),
//
// and its backward. x (E, dim_x, C), y (N, dim_y, C), coef (Q, C), all contiguous with channels innermost, so
// every inner loop runs along C in 64-byte vectors. The edges are visited center by center, centers split
// among torch's threads (at::parallel_for). Entries sharing (k, m) are merged into pairs, and each center's
// weight per pair, w[p] = sum of coef[q] y[i, n_q] over the pair's entries, is formed once for all its edges:
// per edge, out[e, k] = sum over k's pairs of w[p] x[e, m_p], with the accumulators in registers. The
// gradient of y is accumulated per center, so no two threads write the same row.
//
// Registered operators (schema in TORCH_LIBRARY below): the forward, its backward, and an Autograd kernel
// tying them together (first derivatives: inference and forces; training's double backward uses the PyTorch
// reference in vivace.nn.kernels). A CUDA implementation can register under the same names later.
#include "edge_order.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

namespace vivace {
namespace {

struct Entries {
  const int64_t* k;
  const int64_t* m;
  const int64_t* n;
  int64_t count;
};

Entries entries_of(const at::Tensor& entries) {
  const int64_t* p = entries.data_ptr<int64_t>();
  const int64_t q = entries.size(1);
  return {p, p + q, p + 2 * q, q};
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& center, const at::Tensor& coef,
                  const at::Tensor& entries, int64_t dim_out) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && coef.dim() == 2, "channelwise_tp: x (E, dim_x, C), y (N, dim_y, C) "
              "and coef (Q, C) expected, got ", x.sizes(), ", ", y.sizes(), ", ", coef.sizes());
  TORCH_CHECK(x.size(2) == y.size(2) && x.size(2) == coef.size(1), "channelwise_tp: channel counts differ: ",
              x.size(2), ", ", y.size(2), ", ", coef.size(1));
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.scalar_type() == coef.scalar_type(),
              "channelwise_tp: x, y and coef must share one dtype");
  TORCH_CHECK(center.dim() == 1 && center.size(0) == x.size(0) && center.scalar_type() == at::kLong,
              "channelwise_tp: center must be int64 with one entry per edge");
  TORCH_CHECK(entries.dim() == 2 && entries.size(0) == 3 && entries.size(1) == coef.size(0) &&
                  entries.scalar_type() == at::kLong,
              "channelwise_tp: entries must be int64 (3, Q): the rows k, m, n");
  TORCH_CHECK(dim_out >= 0, "channelwise_tp: dim_out must be non-negative");
}

void check_entries(Entries q, int64_t dim_out, int64_t dim_x, int64_t dim_y) {
  for (int64_t p = 0; p < q.count; ++p)
    TORCH_CHECK(q.k[p] >= 0 && q.k[p] < dim_out && q.m[p] >= 0 && q.m[p] < dim_x && q.n[p] >= 0 && q.n[p] < dim_y,
                "channelwise_tp: entry ", p, " (", q.k[p], ", ", q.m[p], ", ", q.n[p], ") is outside (", dim_out,
                ", ", dim_x, ", ", dim_y, ")");
}

// Lists of (a, b) row offsets, one list per output row: output row r is sum over its list of a-row * b-row.
struct RowLists {
  std::vector<int64_t> start;  // (rows + 1)
  std::vector<int64_t> a, b;   // row offsets in elements
};

// row[s] is the output row of item s; a[s] and b[s] the rows of its two factors.
RowLists row_lists(int64_t rows, int64_t count, const int64_t* row, const int64_t* a, const int64_t* b, int64_t C) {
  RowLists l;
  l.start.assign(rows + 1, 0);
  for (int64_t s = 0; s < count; ++s) ++l.start[row[s] + 1];
  std::partial_sum(l.start.begin(), l.start.end(), l.start.begin());
  l.a.resize(count);
  l.b.resize(count);
  std::vector<int64_t> next(l.start.begin(), l.start.end() - 1);
  for (int64_t s = 0; s < count; ++s) {
    const int64_t at = next[row[s]]++;
    l.a[at] = a[s] * C;
    l.b[at] = b[s] * C;
  }
  return l;
}

// The contraction's plan: its entries merged by (k, m) into pairs, since for one center the weighted factor
//   w[p] = sum over the entries q of pair p of coef[q] y[i, n_q]
// is shared by all of its edges; the per-edge products then run over pairs, not entries.
struct Plan {
  int64_t pairs;
  std::vector<int64_t> pair_k, pair_m, entry_pair;
  RowLists weights;      // w[p] = sum coef[q] * y[n_q]          (rows: pairs)
  RowLists out_rows;     // out[e, k] = sum w[p] * x[e, m_p]     (rows: dim_out)
  RowLists grad_x_rows;  // grad_x[e, m] = sum w[p] * g[e, k_p]  (rows: dim_x)
  RowLists grad_y_rows;  // grad_y[i, n] = sum coef[q] * gw[pair q]   (rows: dim_y)
};

Plan plan_of(Entries q, int64_t dim_out, int64_t dim_x, int64_t dim_y, int64_t C) {
  Plan plan;
  std::vector<int64_t> pair_index(dim_out * dim_x, -1);
  plan.entry_pair.resize(q.count);
  for (int64_t p = 0; p < q.count; ++p) {
    int64_t& pair = pair_index[q.k[p] * dim_x + q.m[p]];
    if (pair < 0) {
      pair = static_cast<int64_t>(plan.pair_k.size());
      plan.pair_k.push_back(q.k[p]);
      plan.pair_m.push_back(q.m[p]);
    }
    plan.entry_pair[p] = pair;
  }
  plan.pairs = static_cast<int64_t>(plan.pair_k.size());
  std::vector<int64_t> entry(q.count), pair(plan.pairs);
  std::iota(entry.begin(), entry.end(), int64_t{0});
  std::iota(pair.begin(), pair.end(), int64_t{0});
  plan.weights = row_lists(plan.pairs, q.count, plan.entry_pair.data(), entry.data(), q.n, C);
  plan.out_rows = row_lists(dim_out, plan.pairs, plan.pair_k.data(), pair.data(), plan.pair_m.data(), C);
  plan.grad_x_rows = row_lists(dim_x, plan.pairs, plan.pair_m.data(), pair.data(), plan.pair_k.data(), C);
  plan.grad_y_rows = row_lists(dim_y, q.count, q.n, entry.data(), plan.entry_pair.data(), C);
  return plan;
}

// A vector of channels of Bytes bytes (64: 16 floats or 8 doubles; 32 for narrow models) in the compiler's
// vector extension: lowered to whatever vector instructions the target has, and kept in registers.
template <typename T, int Bytes>
struct VectorOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T, int Bytes = 64>
using Vec = typename VectorOf<T, Bytes>::type;
template <typename T, int Bytes = 64>
constexpr int64_t kLanes = Bytes / sizeof(T);

template <typename T, int Bytes = 64>
inline Vec<T, Bytes> load(const T* p) {
  Vec<T, Bytes> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T, int Bytes>
inline void store(T* p, const Vec<T, Bytes>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// out[r, c0 : c0 + V vectors] = sum over row r's list of a[a_s + c] * b[b_s + c], for every row r; the V
// accumulators stay in registers across the list.
template <typename T, int V, int Bytes = 64>
inline void contract_block(const RowLists& l, const T* a, const T* b, T* out, int64_t rows, int64_t C) {
  constexpr int64_t L = kLanes<T, Bytes>;
  for (int64_t r = 0; r < rows; ++r) {
    Vec<T, Bytes> acc[V] = {};
    for (int64_t s = l.start[r]; s < l.start[r + 1]; ++s) {
      const T* as = a + l.a[s];
      const T* bs = b + l.b[s];
      for (int v = 0; v < V; ++v) acc[v] += load<T, Bytes>(as + v * L) * load<T, Bytes>(bs + v * L);
    }
    for (int v = 0; v < V; ++v) store<T, Bytes>(out + r * C + v * L, acc[v]);
  }
}

// The channels' tail, narrower than a vector.
template <typename T>
inline void contract_tail(const RowLists& l, const T* a, const T* b, T* out, int64_t rows, int64_t C, int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < width; ++c) {
      T acc = T(0);
      for (int64_t s = l.start[r]; s < l.start[r + 1]; ++s) acc += a[l.a[s] + c] * b[l.b[s] + c];
      out[r * C + c] = acc;
    }
}

// Blocks of four 64-byte vectors of channels, then of two, of one, a 32-byte vector, and the rest one by one.
template <typename T>
inline void contract(const RowLists& l, const T* a, const T* b, T* out, int64_t rows, int64_t C) {
  constexpr int64_t L = kLanes<T>, H = kLanes<T, 32>;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= C; c0 += 4 * L) contract_block<T, 4>(l, a + c0, b + c0, out + c0, rows, C);
  if (c0 + 2 * L <= C) {
    contract_block<T, 2>(l, a + c0, b + c0, out + c0, rows, C);
    c0 += 2 * L;
  }
  if (c0 + L <= C) {
    contract_block<T, 1>(l, a + c0, b + c0, out + c0, rows, C);
    c0 += L;
  }
  if (c0 + H <= C) {
    contract_block<T, 1, 32>(l, a + c0, b + c0, out + c0, rows, C);
    c0 += H;
  }
  if (c0 < C) contract_tail<T>(l, a + c0, b + c0, out + c0, rows, C, C - c0);
}

// out[c] += a[c] * b[c] for the C channels of one row.
template <typename T>
inline void add_product(T* out, const T* a, const T* b, int64_t C) {
  constexpr int64_t L = kLanes<T>, H = kLanes<T, 32>;
  int64_t c = 0;
  for (; c + L <= C; c += L) store<T, 64>(out + c, load<T>(out + c) + load<T>(a + c) * load<T>(b + c));
  if (c + H <= C) {
    store<T, 32>(out + c, load<T, 32>(out + c) + load<T, 32>(a + c) * load<T, 32>(b + c));
    c += H;
  }
  for (; c < C; ++c) out[c] += a[c] * b[c];
}

// gw[p, c0 : c0 + one vector] += sum over the edges j of g_j[k_p] * x_j[m_p], for all pairs p.
template <typename T, int Bytes>
inline void accumulate_block(const Plan& plan, const T* const* g, const T* const* x, int edges, T* gw, int64_t C,
                             int64_t c0) {
  for (int64_t p = 0; p < plan.pairs; ++p) {
    const int64_t k = plan.pair_k[p] * C + c0, m = plan.pair_m[p] * C + c0;
    Vec<T, Bytes> acc = load<T, Bytes>(gw + p * C + c0);
    for (int j = 0; j < edges; ++j) acc += load<T, Bytes>(g[j] + k) * load<T, Bytes>(x[j] + m);
    store<T, Bytes>(gw + p * C + c0, acc);
  }
}

// gw[p] += sum over the edges j of g_j[k_p] * x_j[m_p], for all pairs p: a few edges' share of gw, each
// vector of gw read and written once for all of them.
template <typename T>
inline void accumulate_pairs(const Plan& plan, const T* const* g, const T* const* x, int edges, T* gw, int64_t C) {
  constexpr int64_t L = kLanes<T>, H = kLanes<T, 32>;
  int64_t c0 = 0;
  for (; c0 + L <= C; c0 += L) accumulate_block<T, 64>(plan, g, x, edges, gw, C, c0);
  if (c0 + H <= C) {
    accumulate_block<T, 32>(plan, g, x, edges, gw, C, c0);
    c0 += H;
  }
  for (; c0 < C; ++c0)
    for (int64_t p = 0; p < plan.pairs; ++p)
      for (int j = 0; j < edges; ++j) gw[p * C + c0] += g[j][plan.pair_k[p] * C + c0] * x[j][plan.pair_m[p] * C + c0];
}

// out[e, k] = sum_{p: k_p = k} w[p] x[e, m_p], center by center.
template <typename T>
void forward_kernel(const T* x, const T* y, const int64_t* center, const T* coef, const Plan& plan, T* out,
                    int64_t num_edges, int64_t num_nodes, int64_t dim_x, int64_t dim_y, int64_t dim_out, int64_t C) {
  const EdgesByNode order = edges_by_node(center, num_edges, num_nodes);
  at::parallel_for(0, num_nodes, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> w(plan.pairs * C);
    for (int64_t i = begin; i < end; ++i) {
      if (order.start[i] == order.start[i + 1]) continue;
      contract(plan.weights, coef, y + i * dim_y * C, w.data(), plan.pairs, C);
      for (int64_t s = order.start[i]; s < order.start[i + 1]; ++s) {
        const int64_t e = order.edges[s];
        contract(plan.out_rows, w.data(), x + e * dim_x * C, out + e * dim_out * C, dim_out, C);
      }
    }
  });
}

// Center by center (no two threads write one row of grad_y):
//   grad_x[e, m] = sum_{p: m_p = m} w[p] g[e, k_p],    gw[p] = sum over i's edges of g[e, k_p] x[e, m_p],
//   grad_y[i, n] = sum_{q: n_q = n} coef[q] gw[pair q],   and when asked grad_coef[q] += gw[pair q] y[i, n_q].
constexpr int kEdgeBlock = 4;

template <typename T>
void backward_kernel(const T* g, const T* x, const T* y, const int64_t* center, const T* coef, Entries q,
                     const Plan& plan, T* grad_x, T* grad_y, T* grad_coef, int64_t num_edges, int64_t num_nodes,
                     int64_t dim_x, int64_t dim_y, int64_t dim_out, int64_t C) {
  const EdgesByNode order = edges_by_node(center, num_edges, num_nodes);
  const int threads = at::get_num_threads();
  std::vector<std::vector<T>> coef_sums(grad_coef ? threads : 0, std::vector<T>(q.count * C, T(0)));
  at::parallel_for(0, num_nodes, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> w(plan.pairs * C), gw(plan.pairs * C);
    T* coef_sum = grad_coef ? coef_sums[at::get_thread_num()].data() : nullptr;
    for (int64_t i = begin; i < end; ++i) {
      const T* yi = y + i * dim_y * C;
      T* gyi = grad_y + i * dim_y * C;
      if (order.start[i] == order.start[i + 1]) {
        std::fill(gyi, gyi + dim_y * C, T(0));
        continue;
      }
      contract(plan.weights, coef, yi, w.data(), plan.pairs, C);
      std::fill(gw.begin(), gw.end(), T(0));
      for (int64_t s0 = order.start[i]; s0 < order.start[i + 1]; s0 += kEdgeBlock) {
        const int edges = static_cast<int>(std::min<int64_t>(kEdgeBlock, order.start[i + 1] - s0));
        const T* ge[kEdgeBlock];
        const T* xe[kEdgeBlock];
        for (int j = 0; j < edges; ++j) {
          const int64_t e = order.edges[s0 + j];
          ge[j] = g + e * dim_out * C;
          xe[j] = x + e * dim_x * C;
          contract(plan.grad_x_rows, w.data(), ge[j], grad_x + e * dim_x * C, dim_x, C);
        }
        accumulate_pairs(plan, ge, xe, edges, gw.data(), C);
      }
      contract(plan.grad_y_rows, coef, gw.data(), gyi, dim_y, C);
      if (coef_sum) {
        for (int64_t p = 0; p < q.count; ++p)
          add_product(coef_sum + p * C, gw.data() + plan.entry_pair[p] * C, yi + q.n[p] * C, C);
      }
    }
  });
  if (grad_coef) {
    std::fill(grad_coef, grad_coef + q.count * C, T(0));
    for (const auto& sum : coef_sums)
      for (int64_t j = 0; j < q.count * C; ++j) grad_coef[j] += sum[j];
  }
}

at::Tensor channelwise_tp_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& center_in,
                              const at::Tensor& coef_in, const at::Tensor& entries_in, int64_t dim_out) {
  check_inputs(x_in, y_in, center_in, coef_in, entries_in, dim_out);
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), center = center_in.contiguous();
  const at::Tensor coef = coef_in.contiguous(), entries = entries_in.contiguous();
  const int64_t E = x.size(0), C = x.size(2);
  at::Tensor out = at::empty({E, dim_out, C}, x.options());
  if (E == 0 || C == 0) return out.zero_();
  check_index_range("channelwise_tp", center.data_ptr<int64_t>(), E, y.size(0), "center", "nodes");
  const Entries q = entries_of(entries);
  check_entries(q, dim_out, x.size(1), y.size(1));
  const Plan plan = plan_of(q, dim_out, x.size(1), y.size(1), C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), center.data_ptr<int64_t>(),
                             coef.data_ptr<scalar_t>(), plan, out.data_ptr<scalar_t>(), E, y.size(0), x.size(1),
                             y.size(1), dim_out, C);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> channelwise_tp_backward_cpu(
    const at::Tensor& grad_in, const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& center_in,
    const at::Tensor& coef_in, const at::Tensor& entries_in, bool coef_grad) {
  const int64_t dim_out = grad_in.dim() == 3 ? grad_in.size(1) : -1;
  check_inputs(x_in, y_in, center_in, coef_in, entries_in, dim_out);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == x_in.size(0) && grad_in.size(2) == x_in.size(2),
              "channelwise_tp_backward: grad must be (E, dim_out, C)");
  const at::Tensor g = grad_in.to(x_in.scalar_type()).contiguous(), x = x_in.contiguous(), y = y_in.contiguous();
  const at::Tensor center = center_in.contiguous(), coef = coef_in.contiguous(), entries = entries_in.contiguous();
  at::Tensor grad_x = at::empty_like(x), grad_y = at::empty_like(y), grad_coef = at::zeros_like(coef);
  const int64_t E = x.size(0), N = y.size(0), C = x.size(2);
  if (E == 0 || C == 0) return {grad_x.zero_(), grad_y.zero_(), grad_coef};
  check_index_range("channelwise_tp", center.data_ptr<int64_t>(), E, N, "center", "nodes");
  const Entries q = entries_of(entries);
  check_entries(q, dim_out, x.size(1), y.size(1));
  const Plan plan = plan_of(q, dim_out, x.size(1), y.size(1), C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                              center.data_ptr<int64_t>(), coef.data_ptr<scalar_t>(), q, plan,
                              grad_x.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(),
                              coef_grad ? grad_coef.data_ptr<scalar_t>() : nullptr, E, N, x.size(1), y.size(1),
                              dim_out, C);
  });
  return {grad_x, grad_y, grad_coef};
}

class ChannelwiseTP : public torch::autograd::Function<ChannelwiseTP> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y,
                            const at::Tensor& center, const at::Tensor& coef, const at::Tensor& entries,
                            int64_t dim_out) {
    ctx->save_for_backward({x, y, center, coef, entries});
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("vivace::channelwise_tp", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, int64_t)>();
    return op.call(x, y, center, coef, entries, dim_out);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("vivace::channelwise_tp_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, bool)>();
    auto [grad_x, grad_y, grad_coef] =
        op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], ctx->needs_input_grad(3));
    return {grad_x, grad_y, at::Tensor(), ctx->needs_input_grad(3) ? grad_coef : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor channelwise_tp_autograd(const at::Tensor& x, const at::Tensor& y, const at::Tensor& center,
                                   const at::Tensor& coef, const at::Tensor& entries, int64_t dim_out) {
  return ChannelwiseTP::apply(x, y, center, coef, entries, dim_out);
}

// The backward is not differentiable itself: refused where a graph of it is asked for (create_graph=True),
// rather than left to autograd's fallback, which would treat it as constant.
std::tuple<at::Tensor, at::Tensor, at::Tensor> channelwise_tp_backward_autograd(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& center, const at::Tensor& coef,
    const at::Tensor& entries, bool coef_grad) {
  const bool differentiable = grad.requires_grad() || x.requires_grad() || y.requires_grad() || coef.requires_grad();
  TORCH_CHECK(!(at::GradMode::is_enabled() && differentiable),
              "vivace::channelwise_tp has first derivatives only (inference and forces); for second derivatives "
              "(training) use the PyTorch reference, vivace.nn.kernels.channelwise_tp_reference");
  at::AutoDispatchBelowADInplaceOrView guard;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("vivace::channelwise_tp_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, x, y, center, coef, entries, coef_grad);
}

}  // namespace

int kernels_version() { return 1; }

}  // namespace vivace

TORCH_LIBRARY(vivace, m) {
  m.def("channelwise_tp(Tensor x, Tensor y, Tensor center, Tensor coef, Tensor entries, int dim_out) -> Tensor");
  m.def(
      "channelwise_tp_backward(Tensor grad, Tensor x, Tensor y, Tensor center, Tensor coef, Tensor entries, "
      "bool coef_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vivace, CPU, m) {
  m.impl("channelwise_tp", &vivace::channelwise_tp_cpu);
  m.impl("channelwise_tp_backward", &vivace::channelwise_tp_backward_cpu);
}

TORCH_LIBRARY_IMPL(vivace, Autograd, m) {
  m.impl("channelwise_tp", &vivace::channelwise_tp_autograd);
  m.impl("channelwise_tp_backward", &vivace::channelwise_tp_backward_autograd);
}
