// Python bindings of the inference core: the same code path LAMMPS uses, callable on numpy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "model.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

py::tuple evaluate(vivace::Model& model, CArray<double> edge_vectors, CArray<int64_t> edge_index,
                   CArray<int64_t> atom_types, int64_t n_local) {
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

  py::array_t<double> energy(N);
  py::array_t<double> forces({E, int64_t(3)});
  {
    py::gil_scoped_release release;
    model.evaluate(g, energy.mutable_data(), forces.mutable_data());
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
                    "Allegro runs as groups of whole centers of about this many edges (0: the whole graph).")
      .def("evaluate", &evaluate, py::arg("edge_vectors"), py::arg("edge_index"), py::arg("atom_types"),
           py::arg("n_local"),
           "Returns (atomic_energy (N,), edge_forces (E,3) = dE_local/dr_ij), float64.");

  m.def("keep_freed_memory_for_reuse", &vivace::keep_freed_memory_for_reuse,
        "Process-wide (glibc): large freed blocks stay on the heap for the next call, as in the LAMMPS pair "
        "style. Repeated CPU evaluations of a large model get faster; the resident size stays at its peak.");
  m.def("set_num_threads", &vivace::set_num_threads);
  m.def("get_num_threads", &vivace::get_num_threads);
}
