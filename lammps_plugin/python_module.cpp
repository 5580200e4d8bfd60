// Python bindings of the inference core: the same code path LAMMPS uses, callable on numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "model.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The contract's inputs as a Graph, checked; the arrays must outlive it.
vivace::Graph graph_of(CArray<double>& edge_vectors, CArray<int64_t>& edge_index, CArray<int64_t>& atom_types,
                       int64_t n_local) {
  if (edge_vectors.ndim() != 2 || edge_vectors.shape(1) != 3) throw py::value_error("edge_vectors must have shape (E, 3)");
  if (edge_index.ndim() != 2 || edge_index.shape(0) != 2) throw py::value_error("edge_index must have shape (2, E)");
  if (edge_index.shape(1) != edge_vectors.shape(0)) throw py::value_error("edge_index and edge_vectors disagree on E");
  if (atom_types.ndim() != 1) throw py::value_error("atom_types must have shape (N,)");
  const int64_t N = atom_types.shape(0), E = edge_vectors.shape(0);
  if (n_local < 0 || n_local > N) throw py::value_error("n_local must lie in [0, N]");
  const int64_t* index = edge_index.data();
  for (int64_t k = 0; k < 2 * E; ++k)
    if (index[k] < 0 || index[k] >= N) throw py::value_error("edge_index holds a node outside [0, N)");

  vivace::Graph g;
  g.edge_vectors = edge_vectors.data();
  g.edge_center = index;
  g.edge_neighbor = index + E;
  g.atom_types = atom_types.data();
  g.num_nodes = N;
  g.num_edges = E;
  g.num_local = n_local;
  return g;
}

py::tuple evaluate(vivace::Model& model, CArray<double> edge_vectors, CArray<int64_t> edge_index,
                   CArray<int64_t> atom_types, int64_t n_local) {
  const vivace::Graph g = graph_of(edge_vectors, edge_index, atom_types, n_local);
  const int64_t N = g.num_nodes, E = g.num_edges;
  py::array_t<double> energy(N);
  py::array_t<double> forces({E, int64_t(3)});
  {
    py::gil_scoped_release release;
    model.evaluate(g, energy.mutable_data(), forces.mutable_data());
  }
  return py::make_tuple(energy, forces);
}

// The exchange of a single process whose other nodes are images of its own nodes: other node
// num_local + j stands for node owner[j].
class ImageExchange : public vivace::FeatureExchange {
 public:
  ImageExchange(const int64_t* owner, int64_t num_local, int64_t num_nodes)
      : owner_(owner), num_local_(num_local), num_nodes_(num_nodes) {}
  void fill(double* rows, int width) override {
    for (int64_t j = num_local_; j < num_nodes_; ++j)
      std::copy_n(rows + owner_[j - num_local_] * width, width, rows + j * width);
  }
  void drain(double* rows, int width) override {
    for (int64_t j = num_local_; j < num_nodes_; ++j)
      for (int c = 0; c < width; ++c) rows[owner_[j - num_local_] * width + c] += rows[j * width + c];
  }

 private:
  const int64_t* owner_;
  int64_t num_local_, num_nodes_;
};

py::tuple evaluate_exchanging(vivace::Model& model, CArray<double> edge_vectors, CArray<int64_t> edge_index,
                              CArray<int64_t> atom_types, int64_t n_local, CArray<int64_t> owner) {
  const int64_t N = atom_types.shape(0), E = edge_vectors.shape(0);
  if (owner.ndim() != 1 || owner.shape(0) != N - n_local) throw py::value_error("owner must have shape (N - n_local,)");
  for (int64_t j = 0; j < owner.shape(0); ++j)
    if (owner.data()[j] < 0 || owner.data()[j] >= n_local) throw py::value_error("owner holds a node outside [0, n_local)");
  vivace::Graph g = graph_of(edge_vectors, edge_index, atom_types, n_local);
  ImageExchange exchange(owner.data(), n_local, N);
  py::array_t<double> energy(N);
  py::array_t<double> forces({E, int64_t(3)});
  {
    py::gil_scoped_release release;
    model.evaluate_exchanging(g, exchange, energy.mutable_data(), forces.mutable_data());
  }
  return py::make_tuple(energy, forces);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "vivace inference core (the code path of the LAMMPS plugin)";
  py::register_exception<vivace::Error>(m, "ArtifactError", PyExc_RuntimeError);
  m.attr("CONTRACT_VERSION") = vivace::kContractVersion;

  py::class_<vivace::Model>(m, "Model")
      .def(py::init<const std::string&, int>(), py::arg("path"), py::arg("device_index") = -1)
      .def_property_readonly("metadata", [](const vivace::Model& self) { return self.metadata().raw; })
      .def_property_readonly("format", &vivace::Model::format)
      .def_property_readonly("type_names", [](const vivace::Model& self) { return self.metadata().type_names; })
      .def_property_readonly("r_max", [](const vivace::Model& self) { return self.metadata().r_max; })
      .def_property("edges_per_group", &vivace::Model::edges_per_group, &vivace::Model::set_edges_per_group,
                    "Allegro, and NequIP's layer programs, run as groups of whole centers of about this many "
                    "edges (0: the whole graph).")
      .def("evaluate", &evaluate, py::arg("edge_vectors"), py::arg("edge_index"), py::arg("atom_types"),
           py::arg("n_local"),
           "Returns (atomic_energy (N,), edge_forces (E,3) = dE_local/dr_ij), float64.")
      .def("evaluate_exchanging", &evaluate_exchanging, py::arg("edge_vectors"), py::arg("edge_index"),
           py::arg("atom_types"), py::arg("n_local"), py::arg("owner"),
           "A message-passing model layer by layer, the nodes [n_local, N) being images of the nodes owner[j] "
           "whose features they receive: what LAMMPS ranks do with their ghosts. Edges must start at nodes "
           "below n_local. Returns what evaluate() does.")
      .def_property_readonly("exchanges_features", &vivace::Model::exchanges_features);

  m.def("keep_freed_memory_for_reuse", &vivace::keep_freed_memory_for_reuse,
        "Process-wide (glibc): large freed blocks stay on the heap for the next call, as in the LAMMPS pair "
        "style. Repeated CPU evaluations of a large model get faster; the resident size stays at its peak.");
  m.def("set_num_threads", &vivace::set_num_threads);
  m.def("get_num_threads", &vivace::get_num_threads);
}
