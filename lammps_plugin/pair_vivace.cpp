#include "pair_vivace.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "platform.h"
#include "update.h"
#include "utils.h"

#include "model.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

using namespace LAMMPS_NS;

namespace {

class GhostExchange : public vivace::FeatureExchange {
 public:
  explicit GhostExchange(PairVivace &pair) : pair(pair) {}
  void fill(double *rows, int width) override { pair.fill_ghost_rows(rows, width); }
  void drain(double *rows, int width) override { pair.drain_ghost_rows(rows, width); }

 private:
  PairVivace &pair;
};

}  // namespace

PairVivace::PairVivace(LAMMPS *lmp, const std::string &kind_) : Pair(lmp), kind(kind_) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_AVAIL;
  ghostneigh = 0;  // 1 for nequip's ghost shell (settings)
}

PairVivace::~PairVivace() {
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairVivace::allocate() {
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

// pair_style allegro [threads N] [chunk N] [short_pairs warn|error|off] | pair_style nequip [...] [shell]
// chunk: edges per group of centers the model runs on (allegro; nequip exchanging features), 0: all at once
// short_pairs: what a pair closer than the training data's shortest distance for its types brings (header)
void PairVivace::settings(int narg, char **arg) {
  requested_threads = 0;
  requested_chunk = -1;
  short_pairs = ShortPairs::warn;
  shell = false;
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "shell") == 0) {
      if (kind != "nequip") error->all(FLERR, "pair_style {}: 'shell' applies to nequip only", kind);
      shell = true;
      iarg += 1;
    } else if (strcmp(arg[iarg], "threads") == 0) {
      if (iarg + 2 > narg) error->all(FLERR, "pair_style {}: 'threads' needs a value", kind);
      requested_threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (requested_threads < 1) error->all(FLERR, "pair_style {}: threads must be at least 1", kind);
      iarg += 2;
    } else if (strcmp(arg[iarg], "chunk") == 0) {
      if (iarg + 2 > narg) error->all(FLERR, "pair_style {}: 'chunk' needs a value", kind);
      requested_chunk = utils::bnumeric(FLERR, arg[iarg + 1], false, lmp);
      if (requested_chunk < 0) error->all(FLERR, "pair_style {}: chunk must be 0 (whole graph) or positive", kind);
      iarg += 2;
    } else if (strcmp(arg[iarg], "short_pairs") == 0) {
      const std::string mode = iarg + 1 < narg ? arg[iarg + 1] : "";
      if (mode == "warn") short_pairs = ShortPairs::warn;
      else if (mode == "error") short_pairs = ShortPairs::error;
      else if (mode == "off") short_pairs = ShortPairs::off;
      else error->all(FLERR, "pair_style {}: 'short_pairs' takes warn, error or off", kind);
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style {}: unknown keyword '{}' (known: threads, chunk, short_pairs{})", kind, arg[iarg],
                 kind == "nequip" ? ", shell" : "");
    }
  }
  ghostneigh = shell ? 1 : 0;  // before pair_coeff, so that pair_style hybrid sees it
}

// This rank's index among the ranks of `world` on the same node (collective over world).
int PairVivace::node_local_rank() {
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int node_rank = 0;
  MPI_Comm_rank(node, &node_rank);
  MPI_Comm_free(&node);
  return node_rank;
}

// Every rank loads its own copy. A failure on some ranks only (a file missing on one node, a GPU out of
// memory) stops the run from those ranks; a failure everywhere is reported once.
void PairVivace::load_model(const std::string &path) {
  const int node_rank = node_local_rank();
  std::string failure;
  try {
    const auto found = vivace::Model::read_metadata(path);
    if (found.model_kind != kind)
      throw vivace::Error(fmt::format("{} holds a '{}' model; use pair_style {}", path, found.model_kind, found.model_kind));
    device_index = -1;
    if (found.device == "cuda") {  // the GPU numbered by this rank's node-local rank (modulo the count)
      const int count = vivace::cuda_device_count();
      if (count == 0)
        throw vivace::Error("the model was exported for cuda, but this torch sees no CUDA device (CPU-only torch "
                            "or no GPU on this node); export it again with --device cpu");
      device_index = preferred_cuda_device >= 0 ? preferred_cuda_device : node_rank % count;
    } else {
      vivace::keep_freed_memory_for_reuse();
      std::string rebound;
      for (const auto &name : vivace::bind_torch_blas_to_torch()) rebound += " " + name;
      if (!rebound.empty() && comm->me == 0)
        utils::logmesg(lmp, "pair_style {}: torch's BLAS calls bound to torch's own, not liblammps's reference BLAS:{}\n",
                       kind, rebound);
    }
    model = std::make_unique<vivace::Model>(path, device_index);
    if (requested_chunk >= 0) model->set_edges_per_group(requested_chunk);
  } catch (const std::exception &e) {  // vivace::Error, or e.g. std::bad_alloc
    failure = e.what();
  }
  int failed_here = failure.empty() ? 0 : 1, failed_ranks = 0;
  MPI_Allreduce(&failed_here, &failed_ranks, 1, MPI_INT, MPI_SUM, world);
  if (failed_ranks == comm->nprocs) error->all(FLERR, "pair_style {}: {}", kind, failure);
  if (failed_here) error->one(FLERR, "pair_style {} on rank {}: {}", kind, comm->me, failure);
  if (failed_ranks > 0) error->all(FLERR, "pair_style {}: the model failed to load on {} rank(s)", kind, failed_ranks);
}

// pair_coeff * * model.pt2 El1 El2 ... (one element or NULL per LAMMPS atom type)
void PairVivace::coeff(int narg, char **arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for {} must be: pair_coeff * * model.pt2 El1 ... El{}", kind, ntypes);
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff for {} names {} element(s) after the model file, but the box has {} atom "
               "type(s): give exactly one element (or NULL) per LAMMPS type",
               kind, narg - 3, ntypes);

  const std::string path = arg[2];
  load_model(path);
  const auto &meta = model->metadata();
  if (meta.units != update->unit_style)
    error->all(FLERR,
               "pair_style {}: the model was trained in LAMMPS units '{}' but this input uses units '{}'; "
               "set 'units {}' before the box is created",
               kind, meta.units, update->unit_style, meta.units);

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
      error->all(FLERR, "pair_style {}: element '{}' (LAMMPS type {}) is not in the model, which knows:{}", kind,
                 element, t, known);
    type_map[t] = found;
  }

  const int T = meta.num_types();
  cutsq_by_type.assign(T * T, 0.0);
  max_cutoff = 0.0;
  for (int a = 0; a < T; a++)
    for (int b = 0; b < T; b++) {
      cutsq_by_type[a * T + b] = meta.cutoff(a, b) * meta.cutoff(a, b);
      max_cutoff = std::max(max_cutoff, meta.cutoff(a, b));
    }
  shortestsq_by_type.clear();
  if (short_pairs != ShortPairs::off)
    for (double d : meta.shortest_distances) shortestsq_by_type.push_back(d * d);
  depth = std::max(1, meta.message_passing_depth);
  if (depth > 1) {  // feature rows between layers; a one-layer model leaves a derived style's own sizes alone
    int widest = 0;
    for (int w : meta.feature_widths) widest = std::max(widest, w);
    comm_forward = comm_reverse = shell ? 0 : widest;  // LAMMPS sizes its buffers from these at init
  }

  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) setflag[i][j] = (type_map[i] >= 0 && type_map[j] >= 0) ? 1 : 0;

  std::vector<int> devices(comm->nprocs);
  MPI_Gather(&device_index, 1, MPI_INT, devices.data(), 1, MPI_INT, 0, world);
  if (comm->me == 0) {
    std::string mapping;
    for (int t = 1; t <= ntypes; t++)
      mapping += fmt::format(" {}->{}", t, type_map[t] < 0 ? std::string("NULL") : meta.type_names[type_map[t]]);
    utils::logmesg(lmp, "pair_style {}: loaded {} ({}, {}, r_max {}, units {}, message-passing depth {})\n", kind,
                   path, model->format(), meta.model_dtype, meta.r_max, meta.units, depth);
    utils::logmesg(lmp, "pair_style {}: LAMMPS type -> element:{}\n", kind, mapping);
    if (meta.shortest_distances.empty()) {
      utils::logmesg(lmp, "pair_style {}: the artifact does not say how close its training data's atoms came "
                          "(exported by an older vivace): pairs are not checked\n", kind);
    } else if (short_pairs != ShortPairs::off) {
      std::string pairs;
      for (int a = 0; a < T; a++)
        for (int b = a; b < T; b++)
          pairs += fmt::format(" {}-{} {:.3f}", meta.type_names[a], meta.type_names[b], meta.shortest_distances[a * T + b]);
      utils::logmesg(lmp, "pair_style {}: {} when a pair comes under 0.9 of its elements' shortest distance in the "
                          "training data (A):{}\n", kind, short_pairs == ShortPairs::error ? "stops" : "warns", pairs);
    }
    std::string placement;
    for (int r = 0; r < comm->nprocs; r++)
      placement += devices[r] < 0 ? std::string(" cpu") : fmt::format(" cuda:{}", devices[r]);
    utils::logmesg(lmp, "pair_style {}: device of each MPI rank:{}\n", kind, placement);
  }
}

void PairVivace::init_style() {
  if (!model) error->all(FLERR, "pair_style {}: pair_coeff * * model.pt2 ... must come before the run", kind);
  if (force->newton_pair == 0 && !newton_off_supported)
    error->all(FLERR, "pair_style {} requires newton pair on", kind);
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style {} requires atom IDs", kind);
  neighbor->add_request(this, shell ? NeighConst::REQ_FULL | NeighConst::REQ_GHOST : NeighConst::REQ_FULL);

  if (depth > 1 && !shell) {
    // under pair_style hybrid, LAMMPS sizes its buffers from the hybrid style's sizes
    force->pair->comm_forward = std::max(force->pair->comm_forward, comm_forward);
    force->pair->comm_reverse = std::max(force->pair->comm_reverse, comm_reverse);
    if (comm->nprocs > 1 && !model->exchanges_features())
      error->all(FLERR,
                 "pair_style {}: the model's artifact holds no programs for exchanging features between ranks "
                 "(exported by an older vivace): export it again, or use 'pair_style {} shell'",
                 kind, kind);
    if (comm->me == 0)
      utils::logmesg(lmp,
                     comm->nprocs > 1
                         ? "pair_style {}: exchanging node features between ranks after each of {} layers (no ghost shell)\n"
                         : "pair_style {}: one rank: ghost atoms merged with the atoms they image, one graph of the "
                           "periodic system ({} layers)\n",
                     kind, depth);
  }
  if (depth > 1 && shell) {
    // Every atom within D hops of a local atom must be a ghost for the whole reneighboring interval.
    const double shell = depth * max_cutoff + neighbor->skin;
    if (comm->cutghostuser < shell) comm->cutghostuser = shell;
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style {}: ghost shell = depth {} x cutoff {} + skin {}: communication cutoff set to {}\n",
                     kind, depth, max_cutoff, neighbor->skin, comm->cutghostuser);
  }

  int threads = requested_threads;
  if (threads == 0) {
    const char *omp = std::getenv("OMP_NUM_THREADS");
    threads = omp ? std::atoi(omp) : 1;
  }
  vivace::set_num_threads(threads > 0 ? threads : 1);
  if (comm->me == 0)
    utils::logmesg(lmp, "pair_style {}: {} torch thread(s) per MPI rank ({})\n", kind, vivace::get_num_threads(),
                   requested_threads ? "pair_style threads" : "OMP_NUM_THREADS");
  seconds_total = seconds_graph = seconds_model = 0.0;
  calls = 0;
  closest_run = ClosePair();
  next_warning = 0.9;
  short_steps = 0;
}

double PairVivace::init_one(int i, int j) {
  if (setflag[i][j] == 0) return 0.0;
  const int T = model->metadata().num_types();
  const int a = type_map[i], b = type_map[j];
  const double cut = std::sqrt(std::max(cutsq_by_type[a * T + b], cutsq_by_type[b * T + a]));
  cutghost[i][j] = cutghost[j][i] = cut;
  return cut;
}

// Several ranks exchange features between the layers of a message-passing model (see the header).
bool PairVivace::exchanging() const { return depth > 1 && !shell && comm->nprocs > 1; }

// Nodes in order of hops from the local atoms: mapped local atoms first (these count), then each shell.
// Edges run from every node fewer than `hops` hops away to all its neighbors within the type-pair cutoff:
// one hop but for nequip's ghost shell. Without the shell, nequip's ghosts that image an atom of this rank
// are that atom's node, and the images of one atom of another rank share one node.
void PairVivace::build_graph() {
  double **x = atom->x;
  const int *type = atom->type;
  const int nall = atom->nlocal + atom->nghost;
  const int T = model->metadata().num_types();
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  const int hops = shell ? depth : 1;
  const bool merge_images = kind == "nequip" && !shell;
  const bool check = checks_short_pairs();
  closest_step = ClosePair();
  node_of_atom.assign(nall, -1);
  atom_of_node.clear();
  node_type.clear();
  edge_center.clear();
  edge_neighbor.clear();
  edge_atom.clear();
  edge_vectors.clear();

  auto add_node = [&](int a) {
    node_of_atom[a] = static_cast<int>(atom_of_node.size());
    atom_of_node.push_back(a);
    node_type.push_back(type_map[type[a]]);
  };

  for (int ii = 0; ii < list->inum; ii++) {
    const int i = ilist[ii];
    if (type_map[type[i]] < 0) continue;
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2]))
      error->one(FLERR, "pair_style {}: atom {} has a non-finite position", kind, atom->tag[i]);
    add_node(i);
  }
  num_local_nodes = static_cast<int64_t>(atom_of_node.size());

  node_of_tag.clear();
  if (merge_images)
    for (int64_t n = 0; n < num_local_nodes; n++) node_of_tag[atom->tag[atom_of_node[n]]] = static_cast<int>(n);
  auto node_of_neighbor = [&](int j) {
    if (node_of_atom[j] >= 0) return node_of_atom[j];
    if (!merge_images) {
      add_node(j);
      return node_of_atom[j];
    }
    auto found = node_of_tag.find(atom->tag[j]);
    if (found != node_of_tag.end()) return node_of_atom[j] = found->second;
    add_node(j);
    return node_of_tag[atom->tag[j]] = node_of_atom[j];
  };

  size_t shell_begin = 0;
  for (int hop = 0; hop < hops; hop++) {
    const size_t shell_end = atom_of_node.size();
    for (size_t n = shell_begin; n < shell_end; n++) {
      const int i = atom_of_node[n];
      const int ti = type_map[type[i]];
      const int *jlist = firstneigh[i];
      for (int jj = 0; jj < numneigh[i]; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const int tj = type_map[type[j]];
        if (tj < 0) continue;
        const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
        const double rsq = dx * dx + dy * dy + dz * dz;
        if (rsq >= cutsq_by_type[ti * T + tj]) continue;
        if (check && rsq < shortestsq_by_type[ti * T + tj]) note_short_pair(i, j, ti, tj, rsq);
        edge_center.push_back(static_cast<int64_t>(n));
        edge_neighbor.push_back(node_of_neighbor(j));
        edge_atom.push_back(j);
        edge_vectors.insert(edge_vectors.end(), {dx, dy, dz});
      }
    }
    shell_begin = shell_end;
  }
}

void PairVivace::compute(int eflag, int vflag) {
  const double start = platform::walltime();
  ev_init(eflag, vflag);
  build_graph();
  if (checks_short_pairs()) check_short_pairs();
  const double built = platform::walltime();

  vivace::Graph g;
  g.edge_vectors = edge_vectors.data();
  g.edge_center = edge_center.data();
  g.edge_neighbor = edge_neighbor.data();
  g.atom_types = node_type.data();
  g.num_nodes = static_cast<int64_t>(atom_of_node.size());
  g.num_edges = static_cast<int64_t>(edge_center.size());
  g.num_local = num_local_nodes;

  if (kind == "nequip" && !shell && !exchanging() && g.num_nodes != g.num_local)
    error->one(FLERR, "pair_style {}: {} ghost atom(s) image no atom of this rank on a single rank", kind,
               g.num_nodes - g.num_local);
  atomic_energy.resize(g.num_nodes);
  edge_forces.resize(3 * g.num_edges);
  try {
    if (exchanging()) {
      GhostExchange exchange(*this);
      model->evaluate_exchanging(g, exchange, atomic_energy.data(), edge_forces.data());
    } else {
      model->evaluate(g, atomic_energy.data(), edge_forces.data());
    }
  } catch (const vivace::Error &e) {
    error->one(FLERR, "pair_style {}: {}", kind, e.what());
  }
  tally();

  const bool ran = g.num_nodes > 0 && g.num_local > 0;
  seconds_model += ran ? model->last_model_seconds() : 0.0;
  seconds_graph += built - start;
  seconds_total += platform::walltime() - start;
  calls++;
}

// Edge force g = dE/dr_ij acts as +g on i and -g on j; its virial is -r_ij (x) g, shared half and half
// between i and j (per-atom and centroid virials alike).
// A running sum of everything tallied is NaN or infinite exactly when some term is: the check costs one
// addition per number.
void PairVivace::tally() {
  double **f = atom->f;
  double checksum = 0.0;
  for (int64_t n = 0; n < num_local_nodes; n++) {
    const int a = atom_of_node[n];
    checksum += atomic_energy[n];
    if (eflag_global) eng_vdwl += atomic_energy[n];
    if (eflag_atom) eatom[a] += atomic_energy[n];
  }

  const size_t E = edge_center.size();
  for (size_t k = 0; k < E; k++) {
    const int i = atom_of_node[edge_center[k]], j = edge_atom[k];
    const double *g = &edge_forces[3 * k];
    const double *r = &edge_vectors[3 * k];
    checksum += g[0] + g[1] + g[2];
    f[i][0] += g[0];
    f[i][1] += g[1];
    f[i][2] += g[2];
    f[j][0] -= g[0];
    f[j][1] -= g[1];
    f[j][2] -= g[2];
    if (!vflag_either) continue;
    // xx yy zz xy xz yz, then yx zx zy for the centroid form.
    const double v[9] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2], -r[0] * g[1], -r[0] * g[2],
                         -r[1] * g[2], -r[1] * g[0], -r[2] * g[0], -r[2] * g[1]};
    if (vflag_global)
      for (int c = 0; c < 6; c++) virial[c] += v[c];
    if (vflag_atom)
      for (int c = 0; c < 6; c++) {
        vatom[i][c] += 0.5 * v[c];
        vatom[j][c] += 0.5 * v[c];
      }
    if (cvflag_atom)
      for (int c = 0; c < 9; c++) {
        cvatom[i][c] += 0.5 * v[c];
        cvatom[j][c] += 0.5 * v[c];
      }
  }
  if (!std::isfinite(checksum)) report_non_finite();
}

void PairVivace::report_non_finite() {
  for (int64_t n = 0; n < num_local_nodes; n++)
    if (!std::isfinite(atomic_energy[n]))
      error->one(FLERR, "pair_style {}: the model gave a non-finite energy for atom {} at step {}", kind,
                 atom->tag[atom_of_node[n]], update->ntimestep);
  for (size_t k = 0; k < edge_center.size(); k++) {
    const double *g = &edge_forces[3 * k];
    if (!std::isfinite(g[0]) || !std::isfinite(g[1]) || !std::isfinite(g[2]))
      error->one(FLERR,
                 "pair_style {}: the model gave a non-finite force on the pair of atoms {} and {} ({:.4g} A apart) "
                 "at step {}",
                 kind, atom->tag[atom_of_node[edge_center[k]]], atom->tag[edge_atom[k]],
                 std::sqrt(edge_vectors[3 * k] * edge_vectors[3 * k] + edge_vectors[3 * k + 1] * edge_vectors[3 * k + 1] +
                           edge_vectors[3 * k + 2] * edge_vectors[3 * k + 2]),
                 update->ntimestep);
  }
}

void PairVivace::note_short_pair(int i, int j, int ti, int tj, double rsq) {
  const double shortestsq = shortestsq_by_type[ti * model->metadata().num_types() + tj];
  const double ratio = std::sqrt(rsq / shortestsq);
  if (ratio >= closest_step.ratio) return;
  closest_step = {ratio, std::sqrt(rsq), std::sqrt(shortestsq), atom->tag[i], atom->tag[j], ti, tj, update->ntimestep};
}

// Collective: the step's closest pair over all ranks, warned about (or stopped at) below the next tenth.
void PairVivace::check_short_pairs() {
  struct {
    double ratio;
    int rank;
  } mine{closest_step.ratio, comm->me}, closest;
  MPI_Allreduce(&mine, &closest, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
  if (closest_step.ratio < closest_run.ratio) closest_run = closest_step;
  if (closest.ratio >= 1.0) return;
  short_steps++;
  if (closest.ratio >= next_warning) return;
  ClosePair pair = closest_step;
  MPI_Bcast(&pair, sizeof(ClosePair), MPI_BYTE, closest.rank, world);
  if (short_pairs == ShortPairs::error)
    error->all(FLERR, "pair_style {}: {}; stopped by short_pairs error", kind, describe(pair));
  if (comm->me == 0) error->warning(FLERR, "pair_style {}: {}: the model is extrapolating", kind, describe(pair));
  next_warning = std::floor(10.0 * pair.ratio) / 10.0;
}

std::string PairVivace::describe(const ClosePair &p) const {
  const auto &names = model->metadata().type_names;
  return fmt::format("atoms {} and {} ({}-{}) are {:.3f} A apart at step {}, {:.2f} of the shortest {}-{} distance "
                     "in the model's training data ({:.3f} A)",
                     p.i, p.j, names[p.ti], names[p.tj], p.r, p.step, p.ratio, names[p.ti], names[p.tj], p.shortest);
}

// Ghost nodes' rows from their owners: local nodes' rows onto their atoms, LAMMPS's forward communication
// (which also relays rows through ghosts that are no node here), then the ghost nodes' atoms.
void PairVivace::fill_ghost_rows(double *rows, int width) {
  const size_t w = width;
  exchange_width = width;
  atom_rows.assign((atom->nlocal + atom->nghost) * w, 0.0);
  for (int64_t n = 0; n < num_local_nodes; n++) std::copy_n(rows + n * w, w, &atom_rows[atom_of_node[n] * w]);
  comm->forward_comm(this);
  for (size_t n = num_local_nodes; n < atom_of_node.size(); n++)
    std::copy_n(&atom_rows[atom_of_node[n] * w], w, rows + n * w);
}

// Ghost nodes' rows added to their owners' through LAMMPS's reverse communication.
void PairVivace::drain_ghost_rows(double *rows, int width) {
  const size_t w = width;
  exchange_width = width;
  atom_rows.assign((atom->nlocal + atom->nghost) * w, 0.0);
  for (size_t n = num_local_nodes; n < atom_of_node.size(); n++)
    std::copy_n(rows + n * w, w, &atom_rows[atom_of_node[n] * w]);
  comm->reverse_comm(this);
  for (int64_t n = 0; n < num_local_nodes; n++)
    for (size_t c = 0; c < w; c++) rows[n * w + c] += atom_rows[atom_of_node[n] * w + c];
}

int PairVivace::pack_forward_comm(int n, int *list, double *buf, int, int *) {
  const size_t w = exchange_width;
  for (int i = 0; i < n; i++) std::copy_n(&atom_rows[list[i] * w], w, buf + i * w);
  return n * exchange_width;
}

void PairVivace::unpack_forward_comm(int n, int first, double *buf) {
  const size_t w = exchange_width;
  std::copy_n(buf, n * w, &atom_rows[first * w]);
}

int PairVivace::pack_reverse_comm(int n, int first, double *buf) {
  const size_t w = exchange_width;
  std::copy_n(&atom_rows[first * w], n * w, buf);
  return n * exchange_width;
}

void PairVivace::unpack_reverse_comm(int n, int *list, double *buf) {
  const size_t w = exchange_width;
  for (int i = 0; i < n; i++)
    for (size_t c = 0; c < w; c++) atom_rows[list[i] * w + c] += buf[i * w + c];
}

// At the end of a run: where the pair style's time went, averaged over ranks.
void PairVivace::finish() {
  if (checks_short_pairs()) {
    struct {
      double ratio;
      int rank;
    } mine{closest_run.ratio, comm->me}, closest;
    MPI_Allreduce(&mine, &closest, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
    if (closest.ratio < 1.0) {
      ClosePair pair = closest_run;
      MPI_Bcast(&pair, sizeof(ClosePair), MPI_BYTE, closest.rank, world);
      if (comm->me == 0)
        utils::logmesg(lmp,
                       "pair_style {}: {} of {} force calls had a pair closer than the training data's shortest "
                       "distance for its elements; the closest: {}\n",
                       kind, short_steps, calls, describe(pair));
    }
  }
  double mine[4] = {seconds_total, seconds_graph, seconds_model, static_cast<double>(calls)};
  double sum[4];
  MPI_Allreduce(mine, sum, 4, MPI_DOUBLE, MPI_SUM, world);
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  double peak_mb = usage.ru_maxrss / 1024.0, largest_mb = 0.0;  // ru_maxrss: kB on Linux
  MPI_Allreduce(&peak_mb, &largest_mb, 1, MPI_DOUBLE, MPI_MAX, world);
  if (comm->me != 0 || sum[3] == 0.0 || sum[0] <= 0.0) return;
  const double per_call_ms = 1e3 * sum[0] / sum[3];
  const double other = sum[0] - sum[1] - sum[2];
  utils::logmesg(lmp,
                 "pair_style {} timing: {:.3f} ms per call per rank; model {:.1f}%, plugin overhead {:.1f}% "
                 "(graph {:.1f}%, copies and forces {:.1f}%)\n",
                 kind, per_call_ms, 100.0 * sum[2] / sum[0], 100.0 * (sum[1] + other) / sum[0],
                 100.0 * sum[1] / sum[0], 100.0 * other / sum[0]);
  utils::logmesg(lmp, "pair_style {}: peak resident memory of the largest rank {:.0f} MB\n", kind, largest_mb);
}
