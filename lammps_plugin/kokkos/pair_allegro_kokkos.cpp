#include "pair_allegro_kokkos.h"

#include "atom_kokkos.h"
#include "atom_masks.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "kokkos.h"
#include "memory_kokkos.h"
#include "neigh_list_kokkos.h"
#include "neigh_request.h"
#include "neighbor.h"
#include "platform.h"
#include "update.h"

#include "model.h"

#include <cmath>
#include <string>
#include <type_traits>

using namespace LAMMPS_NS;

namespace {

// -1 when DeviceType's memory is host memory, else the CUDA device Kokkos runs on.
template <class DeviceType>
int memory_device() {
  if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename DeviceType::memory_space>::accessible) return -1;
#ifdef KOKKOS_ENABLE_CUDA
  return Kokkos::Cuda().cuda_device();
#else
  return -1;
#endif
}

KOKKOS_INLINE_FUNCTION bool is_finite_value(double v) { return v - v == 0.0; }  // false for NaN and +-inf

// Views grow by a fifth beyond what is needed and are kept between steps.
template <class View>
void ensure_length(View &view, size_t n, const std::string &name) {
  if (view.extent(0) < n) view = View(Kokkos::view_alloc(name, Kokkos::WithoutInitializing), n + n / 5 + 16);
}

template <class View>
void ensure_rows(View &view, size_t n, const std::string &name) {
  if (view.extent(0) < n) view = View(Kokkos::view_alloc(name, Kokkos::WithoutInitializing), n + n / 5 + 16, 3);
}

// The edges of one center: every mapped neighbor j within the (type i, type j) cutoff, in list order.
template <class DeviceType>
struct CenterEdges {
  typename ArrayTypes<DeviceType>::t_x_array_randomread x;
  typename ArrayTypes<DeviceType>::t_int_1d_randomread type, numneigh;
  typename ArrayTypes<DeviceType>::t_neighbors_2d neighbors;
  Kokkos::View<int *, DeviceType> type_map;
  Kokkos::View<double *, DeviceType> cutsq;
  int num_types;

  // Calls visit(j, dx, dy, dz) for each edge of center i (r_ij = x_j - x_i); returns how many.
  template <class Visit>
  KOKKOS_INLINE_FUNCTION int64_t visit(const int i, Visit &&visit) const {
    const int ti = type_map(type(i));
    if (ti < 0) return 0;
    int64_t n = 0;
    for (int jj = 0; jj < numneigh(i); jj++) {
      const int j = neighbors(i, jj) & NEIGHMASK;
      const int tj = type_map(type(j));
      if (tj < 0) continue;
      const double dx = x(j, 0) - x(i, 0), dy = x(j, 1) - x(i, 1), dz = x(j, 2) - x(i, 2);
      if (dx * dx + dy * dy + dz * dz >= cutsq(ti * num_types + tj)) continue;
      visit(j, dx, dy, dz);
      n++;
    }
    return n;
  }
};

}  // namespace

template <class DeviceType>
PairAllegroKokkos<DeviceType>::PairAllegroKokkos(LAMMPS *lmp) : PairVivace(lmp, "allegro") {
  kokkosable = 1;
  atomKK = (AtomKokkos *) atom;
  execution_space = ExecutionSpaceFromDevice<DeviceType>::space;
  datamask_read = X_MASK | F_MASK | TYPE_MASK | TAG_MASK | ENERGY_MASK | VIRIAL_MASK;
  datamask_modify = F_MASK | ENERGY_MASK | VIRIAL_MASK;
  centroidstressflag = CENTROID_NOTAVAIL;
  newton_off_supported = true;
  comm_reverse = 9;  // force and per-atom virial of ghosts, newton off
  if (memory_device<DeviceType>() >= 0) preferred_cuda_device = memory_device<DeviceType>();
}

template <class DeviceType>
PairAllegroKokkos<DeviceType>::~PairAllegroKokkos() {
  if (copymode) return;
  memoryKK->destroy_kokkos(k_eatom, eatom);
  memoryKK->destroy_kokkos(k_vatom, vatom);
  eatom = nullptr;
  vatom = nullptr;
}

template <class DeviceType>
void PairAllegroKokkos<DeviceType>::coeff(int narg, char **arg) {
  PairVivace::coeff(narg, arg);
  const int ntypes = atom->ntypes;
  const int T = model->metadata().num_types();
  d_type_map = Kokkos::View<int *, DeviceType>("allegro/kk:type_map", ntypes + 1);
  d_cutsq = Kokkos::View<double *, DeviceType>("allegro/kk:cutsq", T * T);
  auto h_map = Kokkos::create_mirror_view(d_type_map);
  auto h_cut = Kokkos::create_mirror_view(d_cutsq);
  for (int t = 0; t <= ntypes; t++) h_map(t) = type_map[t];
  for (int k = 0; k < T * T; k++) h_cut(k) = cutsq_by_type[k];
  Kokkos::deep_copy(d_type_map, h_map);
  Kokkos::deep_copy(d_cutsq, h_cut);
  if (checks_short_pairs()) {
    d_shortestsq = Kokkos::View<double *, DeviceType>("allegro/kk:shortestsq", T * T);
    auto h_short = Kokkos::create_mirror_view(d_shortestsq);
    for (int k = 0; k < T * T; k++) h_short(k) = shortestsq_by_type[k];
    Kokkos::deep_copy(d_shortestsq, h_short);
  }
}

template <class DeviceType>
void PairAllegroKokkos<DeviceType>::init_style() {
  PairVivace::init_style();
  auto request = neighbor->find_request(this);
  request->set_kokkos_host(std::is_same<DeviceType, LMPHostType>::value &&
                           !std::is_same<DeviceType, LMPDeviceType>::value);
  request->set_kokkos_device(std::is_same<DeviceType, LMPDeviceType>::value);
  request->enable_full();
}

template <class DeviceType>
void PairAllegroKokkos<DeviceType>::compute(int eflag_in, int vflag_in) {
  const double start = platform::walltime();
  ev_init(eflag_in, vflag_in, 0);
  if (eflag_atom) {
    memoryKK->destroy_kokkos(k_eatom, eatom);
    memoryKK->create_kokkos(k_eatom, eatom, maxeatom, "pair:eatom");
    d_eatom = k_eatom.template view<DeviceType>();
  }
  if (vflag_atom) {
    memoryKK->destroy_kokkos(k_vatom, vatom);
    memoryKK->create_kokkos(k_vatom, vatom, maxvatom, "pair:vatom");
    d_vatom = k_vatom.template view<DeviceType>();
  }
  atomKK->sync(execution_space, datamask_read);
  atomKK->modified(execution_space, eflag_either || vflag_either ? datamask_modify : F_MASK);
  x = atomKK->k_x.template view<DeviceType>();
  f = atomKK->k_f.template view<DeviceType>();
  type = atomKK->k_type.template view<DeviceType>();

  build_edges();
  if (checks_short_pairs()) {
    find_closest_pair();
    check_short_pairs();
  }
  const double built = platform::walltime();

  const int nall = atom->nlocal + atom->nghost;
  ensure_length(d_atomic_energy, nall, "allegro/kk:atomic_energy");
  vivace::Graph g;
  g.edge_vectors = d_edge_vectors.data();
  g.edge_center = d_edge_center.data();
  g.edge_neighbor = d_edge_neighbor.data();
  g.atom_types = d_node_type.data();
  g.num_nodes = nall;
  g.num_edges = num_edges;
  g.num_local = atom->nlocal;
  g.memory_device = memory_device<DeviceType>();
  num_local_nodes = atom->nlocal;
  DeviceType().fence();  // the graph is complete before torch reads it (torch runs on its own stream)
  try {
    model->evaluate(g, d_atomic_energy.data(), d_edge_forces.data());
  } catch (const vivace::Error &e) {
    error->one(FLERR, "pair_style {}: {}", kind, e.what());
  }
  tally_edges();

  seconds_model += (g.num_nodes > 0 && g.num_local > 0) ? model->last_model_seconds() : 0.0;
  seconds_graph += built - start;
  seconds_total += platform::walltime() - start;
  calls++;
}

// Edges of every mapped local atom within the type-pair cutoffs: count per list entry, scan, fill.
template <class DeviceType>
void PairAllegroKokkos<DeviceType>::build_edges() {
  auto k_list = static_cast<NeighListKokkos<DeviceType> *>(list);
  d_ilist = k_list->d_ilist;
  d_numneigh = k_list->d_numneigh;
  d_neighbors = k_list->d_neighbors;
  const int inum = list->inum;
  const int nall = atom->nlocal + atom->nghost;
  const int T = model->metadata().num_types();

  const CenterEdges<DeviceType> edges{x, type, d_numneigh, d_neighbors, d_type_map, d_cutsq, T};
  auto x = this->x;
  auto type = this->type;
  auto type_map = d_type_map;
  auto ilist = d_ilist;

  ensure_length(d_edge_count, inum + 1, "allegro/kk:edge_count");
  auto count = d_edge_count;
  int bad_atom = 0;  // 1 + index of a local atom with a non-finite position
  Kokkos::parallel_reduce(
      "allegro/kk:count_edges", Kokkos::RangePolicy<DeviceType>(0, inum),
      KOKKOS_LAMBDA(const int ii, int &bad) {
        const int i = ilist(ii);
        const bool finite = is_finite_value(x(i, 0)) && is_finite_value(x(i, 1)) && is_finite_value(x(i, 2));
        if (type_map(type(i)) >= 0 && !finite && i + 1 > bad) bad = i + 1;
        count(ii) = edges.visit(i, [](int, double, double, double) {});
      },
      Kokkos::Max<int>(bad_atom));
  if (bad_atom > 0) {
    atomKK->sync(Host, TAG_MASK);
    error->one(FLERR, "pair_style {}: atom {} has a non-finite position", kind, atom->tag[bad_atom - 1]);
  }

  int64_t total = 0;
  Kokkos::parallel_scan(
      "allegro/kk:edge_offsets", Kokkos::RangePolicy<DeviceType>(0, inum),
      KOKKOS_LAMBDA(const int ii, int64_t &sum, const bool final) {
        const int64_t n = count(ii);
        if (final) count(ii) = sum;
        sum += n;
      },
      total);
  num_edges = total;

  ensure_length(d_edge_center, total, "allegro/kk:edge_center");
  ensure_length(d_edge_neighbor, total, "allegro/kk:edge_neighbor");
  ensure_rows(d_edge_vectors, total, "allegro/kk:edge_vectors");
  ensure_rows(d_edge_forces, total, "allegro/kk:edge_forces");
  ensure_length(d_node_type, nall, "allegro/kk:node_type");
  auto center = d_edge_center;
  auto neighbor = d_edge_neighbor;
  auto vectors = d_edge_vectors;
  auto node_type = d_node_type;

  Kokkos::parallel_for(
      "allegro/kk:fill_edges", Kokkos::RangePolicy<DeviceType>(0, inum), KOKKOS_LAMBDA(const int ii) {
        const int i = ilist(ii);
        int64_t e = count(ii);
        edges.visit(i, [&](int j, double dx, double dy, double dz) {
          center(e) = i;
          neighbor(e) = j;
          vectors(e, 0) = dx;
          vectors(e, 1) = dy;
          vectors(e, 2) = dz;
          e++;
        });
      });
  // NULL atoms are nodes without edges; they get type 0 and their energies are not counted
  Kokkos::parallel_for(
      "allegro/kk:node_types", Kokkos::RangePolicy<DeviceType>(0, nall), KOKKOS_LAMBDA(const int a) {
        const int t = type_map(type(a));
        node_type(a) = t < 0 ? 0 : t;
      });
}

// This rank's closest pair of the step relative to the training data's shortest distance for its types,
// if under it: one reduction over the edges, the pair's atoms read back only when there is one.
template <class DeviceType>
void PairAllegroKokkos<DeviceType>::find_closest_pair() {
  closest_step = ClosePair();
  const int T = model->metadata().num_types();
  auto center = d_edge_center;
  auto neighbor = d_edge_neighbor;
  auto vectors = d_edge_vectors;
  auto node_type = d_node_type;
  auto shortestsq = d_shortestsq;
  using Closest = Kokkos::MinLoc<double, int64_t>;  // (r / shortest)^2 and its edge
  typename Closest::value_type closest;
  Kokkos::parallel_reduce(
      "allegro/kk:closest_pair", Kokkos::RangePolicy<DeviceType>(0, num_edges),
      KOKKOS_LAMBDA(const int64_t e, typename Closest::value_type &best) {
        const double rsq = vectors(e, 0) * vectors(e, 0) + vectors(e, 1) * vectors(e, 1) + vectors(e, 2) * vectors(e, 2);
        const double sq = shortestsq(node_type(center(e)) * T + node_type(neighbor(e)));
        if (rsq < sq && rsq < best.val * sq) {
          best.val = rsq / sq;
          best.loc = e;
        }
      },
      Closest(closest));
  if (!(closest.val < 1.0)) return;
  auto edge = Kokkos::subview(d_edge_vectors, closest.loc, Kokkos::ALL());
  auto r = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), edge);
  auto i = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), Kokkos::subview(center, closest.loc));
  auto j = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), Kokkos::subview(neighbor, closest.loc));
  atomKK->sync(Host, TAG_MASK | TYPE_MASK);
  note_short_pair(i(), j(), type_map[atom->type[i()]], type_map[atom->type[j()]],
                  r(0) * r(0) + r(1) * r(1) + r(2) * r(2));
}

// Edge force g = dE/dr_ij: +g on i, -g on j, virial -r_ij (x) g shared half and half between i and j; the
// energy is the sum over mapped local atoms. A running sum of everything tallied is finite exactly when
// every term is.
template <class DeviceType>
void PairAllegroKokkos<DeviceType>::tally_edges() {
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const bool newton = force->newton_pair;
  const int want_global_virial = vflag_global, want_atom_virial = vflag_atom, want_atom_energy = eflag_atom;

  ghost_width = 3 + (want_atom_virial ? 6 : 0);
  if (!newton) {
    if ((int) k_ghost.extent(0) < nall || (int) k_ghost.extent(1) < 9)
      k_ghost = DAT::tdual_double_2d("allegro/kk:ghost", nall + nall / 5 + 16, 9);
    Kokkos::deep_copy(k_ghost.template view<DeviceType>(), 0.0);
  }
  auto ghost = k_ghost.template view<DeviceType>();
  auto f = this->f;
  auto center = d_edge_center;
  auto neighbor = d_edge_neighbor;
  auto vectors = d_edge_vectors;
  auto forces = d_edge_forces;
  auto vatom = d_vatom;

  EV_FLOAT edges;  // evdwl: checksum of the edge forces; v: global virial
  Kokkos::parallel_reduce(
      "allegro/kk:tally_edges", Kokkos::RangePolicy<DeviceType>(0, num_edges),
      KOKKOS_LAMBDA(const int64_t e, EV_FLOAT &acc) {
        const int i = center(e), j = neighbor(e);
        const double g[3] = {forces(e, 0), forces(e, 1), forces(e, 2)};
        const double r[3] = {vectors(e, 0), vectors(e, 1), vectors(e, 2)};
        acc.evdwl += g[0] + g[1] + g[2];
        const bool j_here = newton || j < nlocal;
        for (int c = 0; c < 3; c++) {
          Kokkos::atomic_add(&f(i, c), g[c]);
          if (j_here)
            Kokkos::atomic_add(&f(j, c), -g[c]);
          else
            Kokkos::atomic_add(&ghost(j, c), -g[c]);
        }
        if (!want_global_virial && !want_atom_virial) return;
        const double v[6] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2], -r[0] * g[1], -r[0] * g[2], -r[1] * g[2]};
        if (want_global_virial)
          for (int c = 0; c < 6; c++) acc.v[c] += v[c];
        if (want_atom_virial)
          for (int c = 0; c < 6; c++) {
            Kokkos::atomic_add(&vatom(i, c), 0.5 * v[c]);
            if (j_here)
              Kokkos::atomic_add(&vatom(j, c), 0.5 * v[c]);
            else
              Kokkos::atomic_add(&ghost(j, 3 + c), 0.5 * v[c]);
          }
      },
      edges);

  auto type = this->type;
  auto type_map = d_type_map;
  auto energy = d_atomic_energy;
  auto eatom = d_eatom;
  double local_energy = 0.0;
  Kokkos::parallel_reduce(
      "allegro/kk:tally_energy", Kokkos::RangePolicy<DeviceType>(0, nlocal),
      KOKKOS_LAMBDA(const int i, double &sum) {
        if (type_map(type(i)) < 0) return;
        sum += energy(i);
        if (want_atom_energy) eatom(i) += energy(i);
      },
      local_energy);

  if (eflag_global) eng_vdwl += local_energy;
  if (vflag_global)
    for (int c = 0; c < 6; c++) virial[c] += edges.v[c];
  if (!newton) reverse_ghost_contributions();
  if (eflag_atom) {
    k_eatom.template modify<DeviceType>();
    k_eatom.template sync<LMPHostType>();
  }
  if (vflag_atom) {
    k_vatom.template modify<DeviceType>();
    k_vatom.template sync<LMPHostType>();
  }
  if (!std::isfinite(local_energy + edges.evdwl)) report_device_non_finite(local_energy + edges.evdwl);
}

// newton off: LAMMPS leaves forces on ghosts where they are, so the pair style sends what its edges put on
// ghosts to the owners itself, through the host, then adds what each owner received.
template <class DeviceType>
void PairAllegroKokkos<DeviceType>::reverse_ghost_contributions() {
  k_ghost.template modify<DeviceType>();
  k_ghost.template sync<LMPHostType>();
  comm->reverse_comm(this);
  k_ghost.template modify<LMPHostType>();
  k_ghost.template sync<DeviceType>();
  auto ghost = k_ghost.template view<DeviceType>();
  auto f = this->f;
  auto vatom = d_vatom;
  const int want_atom_virial = vflag_atom;
  Kokkos::parallel_for(
      "allegro/kk:add_received", Kokkos::RangePolicy<DeviceType>(0, atom->nlocal), KOKKOS_LAMBDA(const int i) {
        for (int c = 0; c < 3; c++) f(i, c) += ghost(i, c);
        if (want_atom_virial)
          for (int c = 0; c < 6; c++) vatom(i, c) += ghost(i, 3 + c);
      });
}

template <class DeviceType>
int PairAllegroKokkos<DeviceType>::pack_reverse_comm(int n, int first, double *buf) {
  auto ghost = k_ghost.h_view;
  int m = 0;
  for (int i = first; i < first + n; i++)
    for (int c = 0; c < ghost_width; c++) buf[m++] = ghost(i, c);
  return m;
}

template <class DeviceType>
void PairAllegroKokkos<DeviceType>::unpack_reverse_comm(int n, int *list, double *buf) {
  auto ghost = k_ghost.h_view;
  int m = 0;
  for (int k = 0; k < n; k++)
    for (int c = 0; c < ghost_width; c++) ghost(list[k], c) += buf[m++];
}

template <class DeviceType>
void PairAllegroKokkos<DeviceType>::report_device_non_finite(double checksum) {
  auto energy = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), d_atomic_energy);
  auto forces = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), d_edge_forces);
  auto center = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), d_edge_center);
  auto neighbor = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), d_edge_neighbor);
  auto vectors = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace(), d_edge_vectors);
  atomKK->sync(Host, TAG_MASK | TYPE_MASK);
  for (int i = 0; i < atom->nlocal; i++)
    if (type_map[atom->type[i]] >= 0 && !std::isfinite(energy(i)))
      error->one(FLERR, "pair_style {}: the model gave a non-finite energy for atom {} at step {}", kind,
                 atom->tag[i], update->ntimestep);
  for (int64_t e = 0; e < num_edges; e++)
    if (!std::isfinite(forces(e, 0)) || !std::isfinite(forces(e, 1)) || !std::isfinite(forces(e, 2)))
      error->one(FLERR,
                 "pair_style {}: the model gave a non-finite force on the pair of atoms {} and {} ({:.4g} A apart) "
                 "at step {}",
                 kind, atom->tag[center(e)], atom->tag[neighbor(e)],
                 std::sqrt(vectors(e, 0) * vectors(e, 0) + vectors(e, 1) * vectors(e, 1) + vectors(e, 2) * vectors(e, 2)),
                 update->ntimestep);
  error->one(FLERR, "pair_style {}: a non-finite sum ({}) of energies and forces at step {}", kind, checksum,
             update->ntimestep);
}

namespace LAMMPS_NS {
template class PairAllegroKokkos<LMPDeviceType>;
#ifdef LMP_KOKKOS_GPU
template class PairAllegroKokkos<LMPHostType>;
#endif
}  // namespace LAMMPS_NS
