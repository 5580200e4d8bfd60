// The pair styles of vivace: an exported equivariant model evaluated by vivace's inference core.
//
// Allegro (strictly local): local atoms and their ghosts within one cutoff, edges from the local atoms.
// NequIP (message passing over D layers) in one of two ways:
// - exchange (default): the same one-cutoff graph, with every ghost that images an atom of this rank merged
//   into it (on one rank: the periodic graph, run as one program). On several ranks the model runs layer by
//   layer; before each layer ghost features come from their owners (forward communication), and in the
//   backward pass the gradients with respect to them go back to their owners (reverse communication).
// - shell: every atom within D hops of a local atom is a node (a ghost shell D times the cutoff, ghosts with
//   neighbor lists) and edges run from every node fewer than D hops away, so local energies are exact
//   without any exchange, at the price of the shell's redundant work.
// Forces on ghosts go back to their owners through newton on.
#pragma once

#include "pair.h"

#include "model.h"

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

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

  // node features between layers (exchange mode on several ranks): vivace::FeatureExchange's fill and drain
  void fill_ghost_rows(double *rows, int width);
  void drain_ghost_rows(double *rows, int width);
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  const std::string kind;  // "allegro" | "nequip": the model kind this style accepts
  std::unique_ptr<vivace::Model> model;
  std::vector<int> type_map;          // LAMMPS type (1..ntypes) -> model type index, -1 for NULL
  std::vector<double> cutsq_by_type;  // model (center, neighbor) type pair -> squared cutoff
  double max_cutoff = 0.0;
  int depth = 1;  // message-passing depth of the model
  bool shell = false;  // nequip: a ghost shell of depth x cutoff instead of exchanging features
  int requested_threads = 0;
  long requested_chunk = -1;  // edges per center group (allegro); -1: the core's default for the device
  int device_index = -1;  // -1: CPU
  int preferred_cuda_device = -1;      // a CUDA artifact's GPU; -1: the node-local rank modulo the GPU count
  bool newton_off_supported = false;   // the style sends forces on ghosts to their owners itself
  int64_t num_local_nodes = 0;  // nodes [0, num_local_nodes) are local atoms

  // Pairs closer than the training data's shortest distance for their types: there the model extrapolates.
  // Each step the closest such pair over all ranks is found; a warning (or, with short_pairs error, an error)
  // comes when it is under 0.9 of that distance, and again at each further tenth; finish() sums up the run.
  enum class ShortPairs { off, warn, error };
  struct ClosePair {
    double ratio = HUGE_VAL;  // distance / the data's shortest distance for the pair's types
    double r = 0.0, shortest = 0.0;
    tagint i = 0, j = 0;
    int ti = 0, tj = 0;
    bigint step = 0;
  };
  ShortPairs short_pairs = ShortPairs::warn;
  std::vector<double> shortestsq_by_type;  // model type pair -> squared shortest distance; 0: unchecked
  ClosePair closest_step, closest_run;     // this rank's closest pair of the step, of the run
  double next_warning = 0.9;
  bigint short_steps = 0;  // steps of this run with some pair under the data's shortest distance

  // Per-step scratch, reused between steps.
  std::vector<int> node_of_atom, atom_of_node;  // a node's atom: for a merged or exchanged ghost, one image
  std::vector<int> edge_atom;                    // the neighbor atom (local or ghost) of each edge
  std::unordered_map<tagint, int> node_of_tag;   // merging images: the node of each atom ID seen
  std::vector<int64_t> node_type, edge_center, edge_neighbor;
  std::vector<double> edge_vectors, atomic_energy, edge_forces;
  std::vector<double> atom_rows;  // one row of features per local and ghost atom while they are exchanged
  int exchange_width = 0;

  // Wall seconds summed over the run: the whole compute(), graph building, the model itself.
  double seconds_total = 0.0, seconds_graph = 0.0, seconds_model = 0.0;
  long calls = 0;

  void allocate();
  int node_local_rank();
  void load_model(const std::string &path);
  bool exchanging() const;
  void build_graph();
  void tally();
  void report_non_finite();
  bool checks_short_pairs() const { return !shortestsq_by_type.empty(); }  // filled unless off or unknown
  void note_short_pair(int i, int j, int ti, int tj, double rsq);
  void check_short_pairs();
  std::string describe(const ClosePair &p) const;
};

}  // namespace LAMMPS_NS
