// vivace::nequip_conv: NequIP's "uvu" convolution summed into each center, fused:
//
//     out[i, k, c] = norm_i sum over the edges e into center i of
//                    w[row_e, path_k, c] sum_q cg_q sh[e, n_q] x[neighbor_e, m_q, c]
//
// q over the entries (k_q, m_q, n_q) of the Clebsch-Gordan contraction (k the paths' output component, m the
// input component, n the spherical harmonic), path_k the path of output component k. x (N, dim_x, C) node
// features channels-last, sh (E, dim_sh), w (R, paths, C) the radial weights, row_e = slot[e] (an edge and its
// reverse share one row of w: models/common.py reverse_pair_rows) or e where slot is empty, norm (centers,)
// each center's normalisation, out (centers, K, C).
//
// The PyTorch form (gather w and x at the edges, contract, weight, scatter-add) writes and reads (E, paths, C)
// and (E, K, C) tensors and, differentiated, adds by atomics; here each center's sums stay in a (K, C) buffer
// while its edges are visited, centers split among torch's threads. The backward runs two passes, neither
// writing a row another thread writes: by row of w, its gradient and those of its edges' sh; by neighbour,
// each node's gradient of x. Only first derivatives (inference and forces); training differentiates the
// PyTorch form.
#include "edge_order.h"
#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

namespace vivace {
namespace {

// The contraction's entries grouped by output component: output component k sums entries [start[k], start[k+1]).
struct Plan {
  int64_t K, Q;
  std::vector<int64_t> start, m, n, path;  // path per output component
  std::vector<int64_t> entry;              // original index of each grouped entry (for its coefficient)
};

Plan plan_of(const at::Tensor& entries, const at::Tensor& components, int64_t dim_x, int64_t dim_sh, int64_t paths) {
  const int64_t Q = entries.size(1), K = components.size(0);
  const int64_t* k = entries.data_ptr<int64_t>();
  const int64_t* m = k + Q;
  const int64_t* n = k + 2 * Q;
  const int64_t* comp = components.data_ptr<int64_t>();
  Plan plan{K, Q, std::vector<int64_t>(K + 1, 0), {}, {}, {}, {}};
  for (int64_t q = 0; q < Q; ++q) {
    TORCH_CHECK(k[q] >= 0 && k[q] < K && m[q] >= 0 && m[q] < dim_x && n[q] >= 0 && n[q] < dim_sh, "nequip_conv: entry ",
                q, " (", k[q], ", ", m[q], ", ", n[q], ") is outside (", K, ", ", dim_x, ", ", dim_sh, ")");
    ++plan.start[k[q] + 1];
  }
  std::partial_sum(plan.start.begin(), plan.start.end(), plan.start.begin());
  plan.m.resize(Q);
  plan.n.resize(Q);
  plan.entry.resize(Q);
  std::vector<int64_t> next(plan.start.begin(), plan.start.end() - 1);
  for (int64_t q = 0; q < Q; ++q) {
    const int64_t at = next[k[q]]++;
    plan.m[at] = m[q];
    plan.n[at] = n[q];
    plan.entry[at] = q;
  }
  plan.path.assign(comp, comp + K);
  for (int64_t j = 0; j < K; ++j)
    TORCH_CHECK(comp[j] >= 0 && comp[j] < paths, "nequip_conv: component ", j, " names path ", comp[j], " of ", paths);
  return plan;
}

void check_inputs(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& slot,
                  const at::Tensor& center, const at::Tensor& neighbor, const at::Tensor& norm, const at::Tensor& cg,
                  const at::Tensor& entries, const at::Tensor& components) {
  TORCH_CHECK(x.dim() == 3 && sh.dim() == 2 && w.dim() == 3 && cg.dim() == 1, "nequip_conv: x (N, dim_x, C), "
              "sh (E, dim_sh), w (rows, paths, C) and cg (Q,) expected, got ", x.sizes(), ", ", sh.sizes(), ", ",
              w.sizes(), ", ", cg.sizes());
  TORCH_CHECK(w.size(2) == x.size(2), "nequip_conv: w must be (rows, paths, C) with C = ", x.size(2), ", got ",
              w.sizes());
  TORCH_CHECK(slot.dim() == 1 && slot.scalar_type() == at::kLong && (slot.numel() == 0 || slot.size(0) == sh.size(0)),
              "nequip_conv: slot must be int64, one row of w per edge, or empty");
  TORCH_CHECK(slot.numel() > 0 || w.size(0) == sh.size(0), "nequip_conv: without slot, w needs one row per edge (",
              sh.size(0), "), got ", w.size(0));
  TORCH_CHECK(x.scalar_type() == sh.scalar_type() && x.scalar_type() == w.scalar_type() &&
                  x.scalar_type() == cg.scalar_type() && x.scalar_type() == norm.scalar_type(),
              "nequip_conv: x, sh, w, norm and cg must share one dtype");
  TORCH_CHECK(norm.dim() == 1, "nequip_conv: norm must be (centers,), got ", norm.sizes());
  for (const at::Tensor* t : {&center, &neighbor})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == sh.size(0) && t->scalar_type() == at::kLong,
                "nequip_conv: center and neighbor must be int64 with one entry per edge");
  TORCH_CHECK(entries.dim() == 2 && entries.size(0) == 3 && entries.size(1) == cg.size(0) &&
                  entries.scalar_type() == at::kLong, "nequip_conv: entries must be int64 (3, Q): the rows k, m, n");
  TORCH_CHECK(components.dim() == 1 && components.scalar_type() == at::kLong,
              "nequip_conv: components must be int64, one path per output component");
}

// The edges, and the shapes of one call.
struct Graph {
  const int64_t* center;
  const int64_t* neighbor;
  const int64_t* slot;  // nullptr: edge e reads row e of w
  int64_t edges, centers, nodes, rows;
  int64_t row(int64_t e) const { return slot ? slot[e] : e; }
};

struct Dims {
  int64_t dim_x, dim_sh, paths, K;
};

// a[q] = cg_q sh[e, n_q] for the grouped entries of one edge.
template <typename T>
inline void entry_factors(const Plan& plan, const T* cg, const T* sh_e, T* a) {
  for (int64_t q = 0; q < plan.Q; ++q) a[q] = cg[plan.entry[q]] * sh_e[plan.n[q]];
}

// The kernels take the channel count C as a template argument CT where it is one of the usual widths, so that
// their loops along the channels unroll into whole vectors; CT = 0 reads it at run time.
template <typename F>
void with_channels(int64_t C, F&& f) {
  switch (C) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// t[c] = sum over component k's entries of a[q] x_j[m_q, c].
template <typename T, int CT>
inline void component_of(const Plan& plan, int64_t k, const T* a, const T* xj, T* t, int64_t C_) {
  const int64_t C = CT ? CT : C_;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) t[c] = T(0);
  for (int64_t q = plan.start[k]; q < plan.start[k + 1]; ++q) {
    const T aq = a[q];
    const T* xm = xj + plan.m[q] * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) t[c] += aq * xm[c];
  }
}

template <typename T, int CT>
void forward_kernel(const T* x, const T* sh, const T* w, const T* norm, const T* cg, const Graph& graph,
                    const EdgesByNode& by_center, const Plan& plan, const Dims& d, T* out, int64_t C_) {
  const int64_t C = CT ? CT : C_, K = d.K;
  at::parallel_for(0, graph.centers, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> a(plan.Q), t(C);
    for (int64_t i = begin; i < end; ++i) {
      T* oi = out + i * K * C;
      std::fill(oi, oi + K * C, T(0));
      for (int64_t s = by_center.start[i]; s < by_center.start[i + 1]; ++s) {
        const int64_t e = by_center.edges[s];
        const T* xj = x + graph.neighbor[e] * d.dim_x * C;
        const T* we = w + graph.row(e) * d.paths * C;
        entry_factors(plan, cg, sh + e * d.dim_sh, a.data());
        for (int64_t k = 0; k < K; ++k) {
          component_of<T, CT>(plan, k, a.data(), xj, t.data(), C);
          const T* wk = we + plan.path[k] * C;
          T* ok = oi + k * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) ok[c] += wk[c] * t[c];
        }
      }
      const T scale = norm[i];
#pragma omp simd
      for (int64_t j = 0; j < K * C; ++j) oi[j] *= scale;
    }
  });
}

// g below is the gradient of the output times norm.
// By row r of w: grad_w[r, p] = sum over r's edges e and p's components k of g[center_e, k] t_k(e) (t_k as in
// the forward), and for each of those edges
//   grad_sh[e, n] = sum over the entries q with n_q = n of cg_q sum_c x_j[m_q, c] w[r, path_q, c] g[i, k_q, c].
template <typename T, int CT>
void row_gradients(const T* g, const T* x, const T* sh, const T* w, const T* cg, const Graph& graph,
                   const EdgesByNode& by_row, const Plan& plan, const Dims& d, T* grad_sh, T* grad_w, int64_t C_) {
  const int64_t C = CT ? CT : C_, K = d.K, P = d.paths;
  at::parallel_for(0, graph.rows, 8, [&](int64_t begin, int64_t end) {
    std::vector<T> a(plan.Q), t(C), u(C);
    for (int64_t r = begin; r < end; ++r) {
      const T* wr = w + r * P * C;
      T* gwr = grad_w + r * P * C;
      std::fill(gwr, gwr + P * C, T(0));
      const int64_t first = graph.slot ? by_row.start[r] : r, last = graph.slot ? by_row.start[r + 1] : r + 1;
      for (int64_t s = first; s < last; ++s) {
        const int64_t e = graph.slot ? by_row.edges[s] : s;
        const T* gi = g + graph.center[e] * K * C;
        const T* xj = x + graph.neighbor[e] * d.dim_x * C;
        T* gse = grad_sh + e * d.dim_sh;
        std::fill(gse, gse + d.dim_sh, T(0));
        entry_factors(plan, cg, sh + e * d.dim_sh, a.data());
        for (int64_t k = 0; k < K; ++k) {
          const T* gk = gi + k * C;
          const T* wk = wr + plan.path[k] * C;
          component_of<T, CT>(plan, k, a.data(), xj, t.data(), C);
          T* gwk = gwr + plan.path[k] * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            gwk[c] += gk[c] * t[c];
            u[c] = gk[c] * wk[c];
          }
          for (int64_t q = plan.start[k]; q < plan.start[k + 1]; ++q) {
            const T* xm = xj + plan.m[q] * C;
            T dot = T(0);
#pragma omp simd reduction(+ : dot)
            for (int64_t c = 0; c < C; ++c) dot += u[c] * xm[c];
            gse[plan.n[q]] += cg[plan.entry[q]] * dot;
          }
        }
      }
    }
  });
}

// By neighbour: grad_x[j, m_q] = sum over the edges e from j and the entries q of
//   a_q(e) w[row_e, path_q] g[center_e, k_q].
template <typename T, int CT>
void node_gradients(const T* g, const T* sh, const T* w, const T* cg, const Graph& graph, const EdgesByNode& by_neighbor,
                    const Plan& plan, const Dims& d, T* grad_x, int64_t C_) {
  const int64_t C = CT ? CT : C_, K = d.K;
  at::parallel_for(0, graph.nodes, 4, [&](int64_t begin, int64_t end) {
    std::vector<T> a(plan.Q), u(C);
    for (int64_t j = begin; j < end; ++j) {
      T* gxj = grad_x + j * d.dim_x * C;
      std::fill(gxj, gxj + d.dim_x * C, T(0));
      for (int64_t s = by_neighbor.start[j]; s < by_neighbor.start[j + 1]; ++s) {
        const int64_t e = by_neighbor.edges[s];
        const T* gi = g + graph.center[e] * K * C;
        const T* we = w + graph.row(e) * d.paths * C;
        entry_factors(plan, cg, sh + e * d.dim_sh, a.data());
        for (int64_t k = 0; k < K; ++k) {
          const T* gk = gi + k * C;
          const T* wk = we + plan.path[k] * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) u[c] = gk[c] * wk[c];
          for (int64_t q = plan.start[k]; q < plan.start[k + 1]; ++q) {
            const T aq = a[q];
            T* gm = gxj + plan.m[q] * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) gm[c] += aq * u[c];
          }
        }
      }
    }
  });
}

struct Inputs {
  at::Tensor x, sh, w, slot, center, neighbor, norm, cg, entries, components;
  Graph graph;
  Dims dims;
  Plan plan;
};

// Checked, contiguous inputs with their graph, dimensions and plan.
Inputs inputs_of(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& slot,
                 const at::Tensor& center, const at::Tensor& neighbor, const at::Tensor& norm, const at::Tensor& cg,
                 const at::Tensor& entries, const at::Tensor& components) {
  check_inputs(x, sh, w, slot, center, neighbor, norm, cg, entries, components);
  Inputs in{x.contiguous(),      sh.contiguous(),         w.contiguous(),    slot.contiguous(),
            center.contiguous(), neighbor.contiguous(),   norm.contiguous(), cg.contiguous(),
            entries.contiguous(), components.contiguous(), {},                {},
            {}};
  const int64_t E = in.sh.size(0);
  in.graph = {in.center.data_ptr<int64_t>(), in.neighbor.data_ptr<int64_t>(),
              in.slot.numel() ? in.slot.data_ptr<int64_t>() : nullptr, E, in.norm.size(0), in.x.size(0), in.w.size(0)};
  in.plan = plan_of(in.entries, in.components, in.x.size(1), in.sh.size(1), in.w.size(1));
  in.dims = {in.x.size(1), in.sh.size(1), in.w.size(1), in.plan.K};
  check_index_range("nequip_conv", in.graph.center, E, in.graph.centers, "center", "centers");
  check_index_range("nequip_conv", in.graph.neighbor, E, in.graph.nodes, "neighbor", "nodes");
  if (in.graph.slot) check_index_range("nequip_conv", in.graph.slot, E, in.graph.rows, "slot", "rows of w");
  return in;
}

at::Tensor nequip_conv_cpu(const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& slot,
                           const at::Tensor& center, const at::Tensor& neighbor, const at::Tensor& norm,
                           const at::Tensor& cg, const at::Tensor& entries, const at::Tensor& components) {
  const Inputs in = inputs_of(x, sh, w, slot, center, neighbor, norm, cg, entries, components);
  const int64_t C = in.x.size(2);
  at::Tensor out = at::empty({in.graph.centers, in.dims.K, C}, in.x.options());
  if (in.graph.edges == 0 || C == 0) return out.zero_();
  const EdgesByNode by_center = edges_by_node(in.graph.center, in.graph.edges, in.graph.centers);
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "nequip_conv", [&] {
    with_channels(C, [&](auto CT) {
      forward_kernel<scalar_t, CT>(in.x.data_ptr<scalar_t>(), in.sh.data_ptr<scalar_t>(), in.w.data_ptr<scalar_t>(),
                                   in.norm.data_ptr<scalar_t>(), in.cg.data_ptr<scalar_t>(), in.graph, by_center,
                                   in.plan, in.dims, out.data_ptr<scalar_t>(), C);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> nequip_conv_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& sh, const at::Tensor& w, const at::Tensor& slot,
    const at::Tensor& center, const at::Tensor& neighbor, const at::Tensor& norm, const at::Tensor& cg,
    const at::Tensor& entries, const at::Tensor& components) {
  const Inputs in = inputs_of(x, sh, w, slot, center, neighbor, norm, cg, entries, components);
  const Graph& graph = in.graph;
  const int64_t C = in.x.size(2);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == graph.centers && grad.size(1) == in.dims.K && grad.size(2) == C,
              "nequip_conv_backward: grad must be (", graph.centers, ", ", in.dims.K, ", ", C, "), got ",
              grad.sizes());
  const at::Tensor g = grad.to(in.x.scalar_type()).mul(in.norm.view({-1, 1, 1})).contiguous();
  // each pass writes every row of its outputs: grad_x per node, grad_w per row (zero for a row no edge reads),
  // grad_sh per edge (each edge reads one row)
  at::Tensor grad_x = at::empty_like(in.x), grad_sh = at::empty_like(in.sh), grad_w = at::empty_like(in.w);
  if (graph.edges == 0 || C == 0) return {grad_x.zero_(), grad_sh.zero_(), grad_w.zero_()};
  const EdgesByNode by_row = graph.slot ? edges_by_node(graph.slot, graph.edges, graph.rows) : EdgesByNode{};
  const EdgesByNode by_neighbor = edges_by_node(graph.neighbor, graph.edges, graph.nodes);
  AT_DISPATCH_FLOATING_TYPES(in.x.scalar_type(), "nequip_conv_backward", [&] {
    with_channels(C, [&](auto CT) {
      const scalar_t* cg = in.cg.data_ptr<scalar_t>();
      row_gradients<scalar_t, CT>(g.data_ptr<scalar_t>(), in.x.data_ptr<scalar_t>(), in.sh.data_ptr<scalar_t>(),
                                  in.w.data_ptr<scalar_t>(), cg, graph, by_row, in.plan, in.dims,
                                  grad_sh.data_ptr<scalar_t>(), grad_w.data_ptr<scalar_t>(), C);
      node_gradients<scalar_t, CT>(g.data_ptr<scalar_t>(), in.sh.data_ptr<scalar_t>(), in.w.data_ptr<scalar_t>(), cg,
                                   graph, by_neighbor, in.plan, in.dims, grad_x.data_ptr<scalar_t>(), C);
    });
  });
  return {grad_x, grad_sh, grad_w};
}

using T_ = const at::Tensor&;
using ForwardOp = at::Tensor(T_, T_, T_, T_, T_, T_, T_, T_, T_, T_);
using BackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(T_, T_, T_, T_, T_, T_, T_, T_, T_, T_, T_);

c10::TypedOperatorHandle<BackwardOp> backward_op() {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("vivace::nequip_conv_backward", "").typed<BackwardOp>();
  return op;
}

class NequipConv : public torch::autograd::Function<NequipConv> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, T_ x, T_ sh, T_ w, T_ slot, T_ center,
                            T_ neighbor, T_ norm, T_ cg, T_ entries, T_ components) {
    TORCH_CHECK(!cg.requires_grad() && !norm.requires_grad(),
                "vivace::nequip_conv takes no gradient of its normalisation or Clebsch-Gordan coefficients");
    ctx->save_for_backward({x, sh, w, slot, center, neighbor, norm, cg, entries, components});
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("vivace::nequip_conv", "").typed<ForwardOp>();
    return op.call(x, sh, w, slot, center, neighbor, norm, cg, entries, components);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    auto [grad_x, grad_sh, grad_w] =
        backward_op().call(grads[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9]);
    const at::Tensor none;
    return {grad_x, grad_sh, grad_w, none, none, none, none, none, none, none};
  }
};

at::Tensor nequip_conv_autograd(T_ x, T_ sh, T_ w, T_ slot, T_ center, T_ neighbor, T_ norm, T_ cg, T_ entries,
                                T_ components) {
  return NequipConv::apply(x, sh, w, slot, center, neighbor, norm, cg, entries, components);
}

// Not differentiable itself: refused where a graph of it is asked for (create_graph=True), rather than left to
// autograd's fallback, which would treat it as constant.
std::tuple<at::Tensor, at::Tensor, at::Tensor> nequip_conv_backward_autograd(T_ grad, T_ x, T_ sh, T_ w, T_ slot,
                                                                              T_ center, T_ neighbor, T_ norm, T_ cg,
                                                                              T_ entries, T_ components) {
  const bool differentiable = grad.requires_grad() || x.requires_grad() || sh.requires_grad() || w.requires_grad();
  TORCH_CHECK(!(at::GradMode::is_enabled() && differentiable),
              "vivace::nequip_conv has first derivatives only (inference and forces); for second derivatives "
              "(training) use the PyTorch form, the NequIP model's 'torch' kernel");
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op().call(grad, x, sh, w, slot, center, neighbor, norm, cg, entries, components);
}

}  // namespace
}  // namespace vivace

TORCH_LIBRARY_FRAGMENT(vivace, m) {
  m.def(
      "nequip_conv(Tensor x, Tensor sh, Tensor w, Tensor slot, Tensor center, Tensor neighbor, Tensor norm, "
      "Tensor cg, Tensor entries, Tensor components) -> Tensor");
  m.def(
      "nequip_conv_backward(Tensor grad, Tensor x, Tensor sh, Tensor w, Tensor slot, Tensor center, "
      "Tensor neighbor, Tensor norm, Tensor cg, Tensor entries, Tensor components) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vivace, CPU, m) {
  m.impl("nequip_conv", &vivace::nequip_conv_cpu);
  m.impl("nequip_conv_backward", &vivace::nequip_conv_backward_cpu);
}

TORCH_LIBRARY_IMPL(vivace, Autograd, m) {
  m.impl("nequip_conv", &vivace::nequip_conv_autograd);
  m.impl("nequip_conv_backward", &vivace::nequip_conv_backward_autograd);
}
