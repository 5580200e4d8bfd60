// pair_style allegro: a strictly local equivariant potential evaluated by vivace's inference core.
// Edges run from local centers to local or ghost neighbors; forces on ghosts go back through newton on.
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

class PairAllegro : public Pair {
 public:
  PairAllegro(class LAMMPS *);
  ~PairAllegro() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 protected:
  std::unique_ptr<vivace::Model> model;
  std::vector<int> type_map;     // LAMMPS type (1..ntypes) -> model type index, -1 for NULL
  std::vector<double> cutsq_by_type;  // model (center, neighbor) type pair -> squared cutoff
  int requested_threads = 0;
  int64_t num_local_nodes = 0;  // nodes [0, num_local_nodes) are local atoms

  // Per-step scratch, reused between steps.
  std::vector<int> node_of_atom, atom_of_node;
  std::vector<int64_t> node_type, edge_center, edge_neighbor;
  std::vector<double> edge_vectors, atomic_energy, edge_forces;

  void allocate();
  void build_graph();
  void tally();
};

}  // namespace LAMMPS_NS
