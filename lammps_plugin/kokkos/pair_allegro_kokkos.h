// pair_style allegro/kk: pair_style allegro for Kokkos LAMMPS. The graph is built where the atoms live (the
// Kokkos execution space) from the Kokkos full neighbor list, handed to the inference core as device arrays
// without copies, and the edge forces are tallied there into forces, energies and virials.
//
// Edges: every mapped local atom i to every mapped neighbor j (local or ghost) with |x_j - x_i| below the
// (type i, type j) cutoff, in the order of the neighbor list. Nodes are the atoms themselves (node k = atom
// k); only local atoms' energies count. Forces on ghosts reach their owners through LAMMPS's reverse
// communication (newton on) or through the pair style's own (newton off, the Kokkos default on GPUs).
#pragma once

#include "kokkos_type.h"
#include "pair_kokkos.h"
#include "pair_vivace.h"

namespace LAMMPS_NS {

template <class DeviceType>
class PairAllegroKokkos : public PairVivace {
 public:
  typedef DeviceType device_type;
  typedef ArrayTypes<DeviceType> AT;
  enum { EnabledNeighFlags = FULL };

  explicit PairAllegroKokkos(class LAMMPS *);
  ~PairAllegroKokkos() override;

  void compute(int, int) override;
  void coeff(int, char **) override;
  void init_style() override;

  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  void build_edges();
  void find_closest_pair();
  void tally_edges();
  void reverse_ghost_contributions();
  void report_device_non_finite(double checksum);

  typename AT::t_x_array_randomread x;
  typename AT::t_f_array f;
  typename AT::t_int_1d_randomread type;
  typename AT::t_neighbors_2d d_neighbors;
  typename AT::t_int_1d_randomread d_ilist;
  typename AT::t_int_1d_randomread d_numneigh;

  Kokkos::View<int *, DeviceType> d_type_map;             // LAMMPS type -> model type, -1 for NULL
  Kokkos::View<double *, DeviceType> d_cutsq;             // model (center, neighbor) type pair -> cutoff^2
  Kokkos::View<double *, DeviceType> d_shortestsq;        // ... -> the training data's shortest distance^2
  Kokkos::View<int64_t *, DeviceType> d_edge_count;       // per list entry, then its first edge (scan)
  Kokkos::View<int64_t *, DeviceType> d_edge_center, d_edge_neighbor, d_node_type;
  Kokkos::View<double **, Kokkos::LayoutRight, DeviceType> d_edge_vectors, d_edge_forces;
  Kokkos::View<double *, DeviceType> d_atomic_energy;
  int64_t num_edges = 0;

  // newton off: what the edges put on ghost atoms (force, then virial and centroid virial when asked),
  // sent to the owners by reverse_ghost_contributions()
  DAT::tdual_double_2d k_ghost;
  int ghost_width = 0;

  DAT::tdual_efloat_1d k_eatom;
  DAT::tdual_virial_array k_vatom;
  typename AT::t_efloat_1d d_eatom;
  typename AT::t_virial_array d_vatom;
};

}  // namespace LAMMPS_NS
