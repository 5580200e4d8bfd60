// vivace::channelwise_tp: Allegro's channel-wise tensor product of edge features with the density of each
// edge's center, fused with the gather of that density,
//
//     out[e, k, c] = sum_q coef[q, c] x[e, m_q, c] y[center[e], n_q, c]      q over the entries (k_q, m_q, n_q),
//
// and its backward. x (E, dim_x, C), y (N, dim_y, C), coef (Q, C), all contiguous with channels innermost, so
// every inner loop runs along C and vectorises. The edges are visited center by center, centers split among
// torch's threads (at::parallel_for): each center's factor coef[q] y[i, n_q] is formed once for all its edges,
// and the gradient of y is accumulated per center, so no two threads write the same row.
//
// Registered operators (schema in TORCH_LIBRARY below): the forward, its backward, and an Autograd kernel
// tying them together (first derivatives: inference and forces; training's double backward uses the PyTorch
// reference in vivace.nn.kernels). A CUDA implementation can register under the same names later.
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <utility>
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

void check_centers(const int64_t* center, int64_t num_edges, int64_t num_nodes) {
  if (num_edges == 0) return;
  const auto [lo, hi] = std::minmax_element(center, center + num_edges);
  TORCH_CHECK(*lo >= 0 && *hi < num_nodes, "channelwise_tp: center index ", *lo < 0 ? *lo : *hi,
              " out of range for ", num_nodes, " nodes");
}

// Edges in center order (the identity when the edges already are, as LAMMPS and the grouped inference pass
// them), and where each center's edges start in that order.
struct CenterOrder {
  std::vector<int64_t> edges;
  std::vector<int64_t> start;  // (N + 1)
};

CenterOrder center_order(const int64_t* center, int64_t num_edges, int64_t num_nodes) {
  CenterOrder order;
  order.edges.resize(num_edges);
  std::iota(order.edges.begin(), order.edges.end(), int64_t{0});
  if (!std::is_sorted(center, center + num_edges)) {
    std::stable_sort(order.edges.begin(), order.edges.end(),
                     [center](int64_t a, int64_t b) { return center[a] < center[b]; });
  }
  order.start.assign(num_nodes + 1, 0);
  for (int64_t e = 0; e < num_edges; ++e) ++order.start[center[e] + 1];
  std::partial_sum(order.start.begin(), order.start.end(), order.start.begin());
  return order;
}

// The entries grouped by one of their indices (a counting sort): entries order[start[r]..start[r+1]) have index r.
struct Grouped {
  std::vector<int64_t> order;
  std::vector<int64_t> start;
};

Grouped group_by(const int64_t* index, int64_t count, int64_t rows) {
  Grouped g;
  g.start.assign(rows + 1, 0);
  for (int64_t p = 0; p < count; ++p) ++g.start[index[p] + 1];
  std::partial_sum(g.start.begin(), g.start.end(), g.start.begin());
  g.order.resize(count);
  std::vector<int64_t> next(g.start.begin(), g.start.end() - 1);
  for (int64_t p = 0; p < count; ++p) g.order[next[index[p]]++] = p;
  return g;
}

// One 64-byte block of channels: 16 floats or 8 doubles, an accumulator the compiler keeps in registers.
template <typename T>
constexpr int64_t kBlock = 64 / sizeof(T);

// acc[j] = sum over the group's entries p of a_p[j] b_p[j], for the channels [c0, c0 + width) of one row; a and
// b are the rows of the two factors, picked by the entry.
template <typename T, typename RowsOf>
inline void contract_row(const int64_t* order, int64_t begin, int64_t end, int64_t c0, int64_t width,
                         RowsOf rows_of, T* acc) {
  for (int64_t j = 0; j < kBlock<T>; ++j) acc[j] = T(0);
  for (int64_t s = begin; s < end; ++s) {
    const auto [a, b] = rows_of(order[s]);
    const T* __restrict__ aa = a + c0;
    const T* __restrict__ bb = b + c0;
    if (width == kBlock<T>) {
#pragma omp simd
      for (int64_t j = 0; j < kBlock<T>; ++j) acc[j] += aa[j] * bb[j];
    } else {
      for (int64_t j = 0; j < width; ++j) acc[j] += aa[j] * bb[j];
    }
  }
}

// Every row r of an output: the sum over the entries with index r, block by block of channels, each stored
// with store(r, c0, width, sum).
template <typename T, typename RowsOf, typename Store>
inline void contract_rows(const Grouped& g, int64_t rows, int64_t C, RowsOf rows_of, Store store) {
  alignas(64) T acc[kBlock<T>];
  for (int64_t c0 = 0; c0 < C; c0 += kBlock<T>) {
    const int64_t width = std::min(kBlock<T>, C - c0);
    for (int64_t r = 0; r < rows; ++r) {
      contract_row(g.order.data(), g.start[r], g.start[r + 1], c0, width, rows_of, acc);
      store(r, c0, width, acc);
    }
  }
}

// wy[p] = coef[p] y_i[n_p]: each entry's weighted factor of center i, shared by all of i's edges, so that
// the per-edge work is one product of two rows per entry.
template <typename T>
void weighted_center_rows(const T* coef, const T* yi, Entries q, int64_t C, T* wy) {
  for (int64_t p = 0; p < q.count; ++p) {
    const T* __restrict__ w = coef + p * C;
    const T* __restrict__ v = yi + q.n[p] * C;
    T* __restrict__ out = wy + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] = w[c] * v[c];
  }
}

// out[e, k] = sum_{q: k_q = k} wy[q] x[e, m_q], center by center.
template <typename T>
void forward_kernel(const T* x, const T* y, const int64_t* center, const T* coef, Entries q, T* out,
                    int64_t num_edges, int64_t num_nodes, int64_t dim_x, int64_t dim_y, int64_t dim_out, int64_t C) {
  const CenterOrder order = center_order(center, num_edges, num_nodes);
  const Grouped by_k = group_by(q.k, q.count, dim_out);
  at::parallel_for(0, num_nodes, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> wy(q.count * C);
    for (int64_t i = begin; i < end; ++i) {
      if (order.start[i] == order.start[i + 1]) continue;
      weighted_center_rows(coef, y + i * dim_y * C, q, C, wy.data());
      for (int64_t s = order.start[i]; s < order.start[i + 1]; ++s) {
        const int64_t e = order.edges[s];
        const T* xe = x + e * dim_x * C;
        T* oe = out + e * dim_out * C;
        contract_rows<T>(
            by_k, dim_out, C, [&](int64_t p) { return std::make_pair(wy.data() + p * C, xe + q.m[p] * C); },
            [&](int64_t k, int64_t c0, int64_t width, const T* sum) { std::copy(sum, sum + width, oe + k * C + c0); });
      }
    }
  });
}

// Center by center (no two threads write one row of grad_y):
//   grad_x[e, m] = sum_{q: m_q = m} wy[q] g[e, k_q],    gwy[q] = sum over i's edges of g[e, k_q] x[e, m_q],
//   grad_y[i, n] = sum_{q: n_q = n} coef[q] gwy[q],   and when asked grad_coef[q] += gwy[q] y[i, n_q].
template <typename T>
void backward_kernel(const T* g, const T* x, const T* y, const int64_t* center, const T* coef, Entries q,
                     T* grad_x, T* grad_y, T* grad_coef, int64_t num_edges, int64_t num_nodes, int64_t dim_x,
                     int64_t dim_y, int64_t dim_out, int64_t C) {
  const CenterOrder order = center_order(center, num_edges, num_nodes);
  const Grouped by_m = group_by(q.m, q.count, dim_x), by_n = group_by(q.n, q.count, dim_y);
  const int threads = at::get_num_threads();
  std::vector<std::vector<T>> coef_sums(grad_coef ? threads : 0, std::vector<T>(q.count * C, T(0)));
  at::parallel_for(0, num_nodes, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> wy(q.count * C), gwy(q.count * C);
    T* coef_sum = grad_coef ? coef_sums[at::get_thread_num()].data() : nullptr;
    for (int64_t i = begin; i < end; ++i) {
      const T* yi = y + i * dim_y * C;
      T* gyi = grad_y + i * dim_y * C;
      if (order.start[i] == order.start[i + 1]) {
        std::fill(gyi, gyi + dim_y * C, T(0));
        continue;
      }
      weighted_center_rows(coef, yi, q, C, wy.data());
      std::fill(gwy.begin(), gwy.end(), T(0));
      for (int64_t s = order.start[i]; s < order.start[i + 1]; ++s) {
        const int64_t e = order.edges[s];
        const T* ge = g + e * dim_out * C;
        const T* xe = x + e * dim_x * C;
        T* gxe = grad_x + e * dim_x * C;
        contract_rows<T>(
            by_m, dim_x, C, [&](int64_t p) { return std::make_pair(wy.data() + p * C, ge + q.k[p] * C); },
            [&](int64_t m, int64_t c0, int64_t width, const T* sum) { std::copy(sum, sum + width, gxe + m * C + c0); });
        for (int64_t p = 0; p < q.count; ++p) {
          const T* __restrict__ gk = ge + q.k[p] * C;
          const T* __restrict__ xm = xe + q.m[p] * C;
          T* __restrict__ acc = gwy.data() + p * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) acc[c] += gk[c] * xm[c];
        }
      }
      contract_rows<T>(
          by_n, dim_y, C, [&](int64_t p) { return std::make_pair(coef + p * C, gwy.data() + p * C); },
          [&](int64_t n, int64_t c0, int64_t width, const T* sum) { std::copy(sum, sum + width, gyi + n * C + c0); });
      if (coef_sum) {
        for (int64_t p = 0; p < q.count; ++p) {
          const T* __restrict__ a = gwy.data() + p * C;
          const T* __restrict__ b = yi + q.n[p] * C;
          T* __restrict__ gw = coef_sum + p * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) gw[c] += a[c] * b[c];
        }
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
  check_centers(center.data_ptr<int64_t>(), E, y.size(0));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), center.data_ptr<int64_t>(),
                             coef.data_ptr<scalar_t>(), entries_of(entries), out.data_ptr<scalar_t>(), E,
                             y.size(0), x.size(1), y.size(1), dim_out, C);
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
  check_centers(center.data_ptr<int64_t>(), E, N);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channelwise_tp_backward", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                              center.data_ptr<int64_t>(), coef.data_ptr<scalar_t>(), entries_of(entries),
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
