#include "pair_allegro.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

using namespace LAMMPS_NS;

PairAllegro::PairAllegro(LAMMPS *lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairAllegro::~PairAllegro() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairAllegro::allocate() {
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

// pair_style allegro [threads N]
void PairAllegro::settings(int narg, char **arg) {
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "threads") == 0) {
      if (iarg + 2 > narg) error->all(FLERR, "pair_style allegro: 'threads' needs a value");
      requested_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (requested_threads < 1) error->all(FLERR, "pair_style allegro: threads must be at least 1");
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style allegro: unknown keyword '{}' (known: threads)", arg[iarg]);
    }
  }
}

// pair_coeff * * model.pt2 El1 El2 ... (one element or NULL per LAMMPS atom type)
void PairAllegro::coeff(int narg, char **arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for allegro must be: pair_coeff * * model.pt2 El1 ... El{}", ntypes);
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff for allegro names {} element(s) after the model file, but the box has {} atom "
               "type(s): give exactly one element (or NULL) per LAMMPS type",
               narg - 3, ntypes);

  try {
    model = std::make_unique<vivace::Model>(arg[2]);
  } catch (const vivace::Error &e) {
    error->all(FLERR, "pair_style allegro: {}", e.what());
  }
  const auto &meta = model->metadata();
  if (meta.model_kind != "allegro")
    error->all(FLERR, "pair_style allegro: {} holds a '{}' model; use pair_style {}", arg[2], meta.model_kind,
               meta.model_kind);
  if (meta.units != update->unit_style)
    error->all(FLERR,
               "pair_style allegro: the model was trained in LAMMPS units '{}' but this input uses units '{}'; "
               "set 'units {}' before the box is created",
               meta.units, update->unit_style, meta.units);

  std::string known;
  for (const auto &name : meta.type_names) known += " " + name;
  type_map.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; t++) {
    const std::string element = arg[2 + t];
    if (element == "NULL") continue;
    int found = -1;
    for (int k = 0; k < meta.num_types(); k++)
      if (meta.type_names[k] == element) found = k;
    if (found < 0)
      error->all(FLERR, "pair_style allegro: element '{}' (LAMMPS type {}) is not in the model, which knows:{}",
                 element, t, known);
    type_map[t] = found;
  }

  const int T = meta.num_types();
  cutsq_by_type.assign(T * T, 0.0);
  for (int a = 0; a < T; a++)
    for (int b = 0; b < T; b++) cutsq_by_type[a * T + b] = meta.cutoff(a, b) * meta.cutoff(a, b);

  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) setflag[i][j] = (type_map[i] >= 0 && type_map[j] >= 0) ? 1 : 0;

  if (comm->me == 0) {
    std::string mapping;
    for (int t = 1; t <= ntypes; t++)
      mapping += fmt::format(" {}->{}", t, type_map[t] < 0 ? std::string("NULL") : meta.type_names[type_map[t]]);
    utils::logmesg(lmp, "pair_style allegro: loaded {} ({}, {}, r_max {} , units {})\n", arg[2], model->format(),
                   meta.model_dtype, meta.r_max, meta.units);
    utils::logmesg(lmp, "pair_style allegro: LAMMPS type -> element:{}\n", mapping);
  }
}

void PairAllegro::init_style() {
  if (!model) error->all(FLERR, "pair_style allegro: pair_coeff * * model.pt2 ... must come before the run");
  if (force->newton_pair == 0) error->all(FLERR, "pair_style allegro requires newton pair on");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style allegro requires atom IDs");
  neighbor->add_request(this, NeighConst::REQ_FULL);

  int threads = requested_threads;
  if (threads == 0) {
    const char *omp = std::getenv("OMP_NUM_THREADS");
    threads = omp ? std::atoi(omp) : 1;
  }
  vivace::set_num_threads(threads > 0 ? threads : 1);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style allegro: {} torch thread(s) per MPI rank\n", vivace::get_num_threads());
}

double PairAllegro::init_one(int i, int j) {
  if (setflag[i][j] == 0) return 0.0;
  const int T = model->metadata().num_types();
  const int a = type_map[i], b = type_map[j];
  return std::sqrt(std::max(cutsq_by_type[a * T + b], cutsq_by_type[b * T + a]));
}

// Nodes: mapped local atoms first (these count), then every ghost that is some edge's neighbor.
void PairAllegro::build_graph() {
  double **x = atom->x;
  const int *type = atom->type;
  const int nall = atom->nlocal + atom->nghost;
  const int T = model->metadata().num_types();
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  node_of_atom.assign(nall, -1);
  atom_of_node.clear();
  node_type.clear();
  edge_center.clear();
  edge_neighbor.clear();
  edge_vectors.clear();

  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (type_map[type[i]] < 0) continue;
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2]))
      error->one(FLERR, "pair_style allegro: atom {} has a non-finite position", atom->tag[i]);
    node_of_atom[i] = static_cast<int>(atom_of_node.size());
    atom_of_node.push_back(i);
    node_type.push_back(type_map[type[i]]);
  }
  num_local_nodes = static_cast<int64_t>(atom_of_node.size());

  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    const int ti = type_map[type[i]];
    if (ti < 0) continue;
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      const int tj = type_map[type[j]];
      if (tj < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutsq_by_type[ti * T + tj]) continue;
      if (node_of_atom[j] < 0) {
        node_of_atom[j] = static_cast<int>(atom_of_node.size());
        atom_of_node.push_back(j);
        node_type.push_back(tj);
      }
      edge_center.push_back(node_of_atom[i]);
      edge_neighbor.push_back(node_of_atom[j]);
      edge_vectors.insert(edge_vectors.end(), {dx, dy, dz});
    }
  }
}

void PairAllegro::compute(int eflag, int vflag) {
  ev_init(eflag, vflag);
  build_graph();

  vivace::Graph g;
  g.edge_vectors = edge_vectors.data();
  g.edge_center = edge_center.data();
  g.edge_neighbor = edge_neighbor.data();
  g.atom_types = node_type.data();
  g.num_nodes = static_cast<int64_t>(atom_of_node.size());
  g.num_edges = static_cast<int64_t>(edge_center.size());
  g.num_local = num_local_nodes;

  atomic_energy.resize(g.num_nodes);
  edge_forces.resize(3 * g.num_edges);
  try {
    model->evaluate(g, atomic_energy.data(), edge_forces.data());
  } catch (const vivace::Error &e) {
    error->one(FLERR, "pair_style allegro: {}", e.what());
  }
  tally();
}

// Edge force g = dE/dr_ij acts as +g on i and -g on j; its virial is -r_ij (x) g, shared half and half.
void PairAllegro::tally() {
  double **f = atom->f;
  for (int64_t n = 0; n < num_local_nodes; n++) {
    const int a = atom_of_node[n];
    if (eflag_global) eng_vdwl += atomic_energy[n];
    if (eflag_atom) eatom[a] += atomic_energy[n];
  }

  const size_t E = edge_center.size();
  for (size_t k = 0; k < E; k++) {
    const int i = atom_of_node[edge_center[k]], j = atom_of_node[edge_neighbor[k]];
    const double *g = &edge_forces[3 * k];
    const double *r = &edge_vectors[3 * k];
    f[i][0] += g[0];
    f[i][1] += g[1];
    f[i][2] += g[2];
    f[j][0] -= g[0];
    f[j][1] -= g[1];
    f[j][2] -= g[2];
    if (vflag_either) {
      const double v[6] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2],
                           -r[0] * g[1], -r[0] * g[2], -r[1] * g[2]};
      if (vflag_global)
        for (int c = 0; c < 6; c++) virial[c] += v[c];
      if (vflag_atom)
        for (int c = 0; c < 6; c++) {
          vatom[i][c] += 0.5 * v[c];
          vatom[j][c] += 0.5 * v[c];
        }
    }
  }
}
