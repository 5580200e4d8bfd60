// The pair styles of vivace: an exported equivariant model evaluated by vivace's inference core.
//
// The graph handed to the model is hop-limited: local atoms, then every atom reachable within the model's
// message-passing depth D (1 for Allegro, the number of layers for NequIP). Edges run from every node fewer
// than D hops from a local atom, so the energies of local atoms are exact; forces on ghosts go back through
// newton on. For D > 1 the ghost shell is D times the largest cutoff, and ghosts get neighbor lists.
#pragma once

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vivace {
class Model;
}

namespace LAMMPS_NS {

class PairVivace : public Pair {
 public:
  PairVivace(class LAMMPS *, const std::string &kind);
  ~PairVivace() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void finish() override;

 protected:
  const std::string kind;  // "allegro" | "nequip": the model kind this style accepts
  std::unique_ptr<vivace::Model> model;
  std::vector<int> type_map;          // LAMMPS type (1..ntypes) -> model type index, -1 for NULL
  std::vector<double> cutsq_by_type;  // model (center, neighbor) type pair -> squared cutoff
  double max_cutoff = 0.0;
  int depth = 1;  // message-passing depth of the model
  int requested_threads = 0;
  long requested_chunk = -1;  // edges per center group (allegro); -1: the core's default for the device
  int device_index = -1;  // -1: CPU
  int preferred_cuda_device = -1;      // a CUDA artifact's GPU; -1: the node-local rank modulo the GPU count
  bool newton_off_supported = false;   // the style sends forces on ghosts to their owners itself
  int64_t num_local_nodes = 0;  // nodes [0, num_local_nodes) are local atoms

  // Per-step scratch, reused between steps.
  std::vector<int> node_of_atom, atom_of_node;
  std::vector<int64_t> node_type, edge_center, edge_neighbor;
  std::vector<double> edge_vectors, atomic_energy, edge_forces;

  // Wall seconds summed over the run: the whole compute(), graph building, the model itself.
  double seconds_total = 0.0, seconds_graph = 0.0, seconds_model = 0.0;
  long calls = 0;

  void allocate();
  int node_local_rank();
  void load_model(const std::string &path);
  void build_graph();
  void tally();
  void report_non_finite();
};

}  // namespace LAMMPS_NS
