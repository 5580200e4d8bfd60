#include "model.h"
#include "kernels.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <cmath>
#include <fstream>
#include <sstream>

namespace vivace {

namespace {

const char* kMetadataFile = "vivace_metadata.txt";  // TorchScript extra file: "key=value" lines

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

double to_double(const std::string& key, const std::string& value) {
  try {
    size_t pos = 0;
    double v = std::stod(value, &pos);
    if (pos != value.size()) throw std::invalid_argument(value);
    return v;
  } catch (const std::exception&) {
    throw Error("artifact metadata '" + key + "' is not a number: '" + value + "'");
  }
}

std::map<std::string, std::string> parse_key_values(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    auto eq = line.find('=');
    if (eq != std::string::npos) out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

// glibc serves each allocation above 32 MB with a fresh mmap, and the kernel zero-fills every page of it on
// first touch: a model whose intermediates are that large pays this on every call (NequIP on 192-atom
// water, 10k edges, float64, AOTInductor: 776 ms per call with it, 440 ms without). Once a CPU model
// is loaded, large blocks come from the heap and freed memory stays there for the next call. This changes the
// whole process, so only the LAMMPS pair style asks for it (the Python bindings leave it to the user).
// VIVACE_MALLOC_TUNING=0 leaves the allocator alone.
}  // namespace

void keep_freed_memory_for_reuse() {
#if defined(__GLIBC__)
  static std::once_flag once;
  std::call_once(once, [] {
    const char* setting = std::getenv("VIVACE_MALLOC_TUNING");
    if (setting && std::string(setting) == "0") return;
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, INT_MAX);
  });
#endif
}

#if defined(__GLIBC__) && defined(__x86_64__)
namespace {

// The address an ELF dynamic entry points at: glibc relocates some of them in place, others not.
uintptr_t dynamic_address(const link_map* lib, ElfW(Addr) value) {
  return value < lib->l_addr ? lib->l_addr + value : value;
}

// Where libtorch_cpu's slots may be written (outside its RELRO segment) and where liblammps lies in memory.
struct LoadedObjects {
  const link_map* torch;
  uintptr_t relro_begin = 0, relro_end = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> lammps;  // its PT_LOAD segments

  bool in_lammps(const void* address) const {
    const auto a = reinterpret_cast<uintptr_t>(address);
    for (const auto& [begin, end] : lammps)
      if (a >= begin && a < end) return true;
    return false;
  }
};

int survey_object(dl_phdr_info* info, size_t, void* data) {
  auto* objects = static_cast<LoadedObjects*>(data);
  const bool torch = info->dlpi_addr == objects->torch->l_addr;
  const bool lammps = info->dlpi_name && std::strstr(info->dlpi_name, "liblammps");
  for (int k = 0; k < info->dlpi_phnum; ++k) {
    const ElfW(Phdr)& segment = info->dlpi_phdr[k];
    const uintptr_t begin = info->dlpi_addr + segment.p_vaddr, end = begin + segment.p_memsz;
    if (torch && segment.p_type == PT_GNU_RELRO) objects->relro_begin = begin, objects->relro_end = end;
    if (lammps && segment.p_type == PT_LOAD) objects->lammps.emplace_back(begin, end);
  }
  return 0;
}

std::vector<std::string> rebind_torch_blas_slots() {
  std::vector<std::string> rebound;
  const char* setting = std::getenv("VIVACE_TORCH_BLAS");
  if (setting && std::string(setting) == "0") return rebound;
  void* torch = dlopen("libtorch_cpu.so", RTLD_NOW | RTLD_NOLOAD);
  link_map* lib = nullptr;
  if (!torch || dlinfo(torch, RTLD_DI_LINKMAP, &lib) != 0 || !lib) return rebound;
  const ElfW(Rela)* relocations = nullptr;
  size_t relocations_size = 0;
  const ElfW(Sym)* symbols = nullptr;
  const char* names = nullptr;
  for (const ElfW(Dyn)* d = lib->l_ld; d->d_tag != DT_NULL; ++d) {
    if (d->d_tag == DT_JMPREL) relocations = reinterpret_cast<const ElfW(Rela)*>(dynamic_address(lib, d->d_un.d_ptr));
    if (d->d_tag == DT_PLTRELSZ) relocations_size = d->d_un.d_val;
    if (d->d_tag == DT_SYMTAB) symbols = reinterpret_cast<const ElfW(Sym)*>(dynamic_address(lib, d->d_un.d_ptr));
    if (d->d_tag == DT_STRTAB) names = reinterpret_cast<const char*>(dynamic_address(lib, d->d_un.d_ptr));
  }
  if (!relocations || !symbols || !names) return rebound;
  LoadedObjects objects{lib};
  dl_iterate_phdr(survey_object, &objects);
  if (objects.lammps.empty()) return rebound;
  for (size_t k = 0; k < relocations_size / sizeof(ElfW(Rela)); ++k) {
    const ElfW(Rela)& r = relocations[k];
    if (ELF64_R_TYPE(r.r_info) != R_X86_64_JUMP_SLOT) continue;
    const ElfW(Sym)& sym = symbols[ELF64_R_SYM(r.r_info)];
    if (sym.st_shndx == SHN_UNDEF || ELF64_ST_TYPE(sym.st_info) != STT_FUNC) continue;  // torch's own functions only
    const char* name = names + sym.st_name;
    if (name[0] == '_') continue;  // C++ (vague-linkage copies of the same code) and reserved names stay as bound
    // what the lazy binding resolves to: the first in the global scope (an address-range test, not dladdr, which
    // scans a whole symbol table per call: 13 s for libtorch_cpu's slots)
    if (!objects.in_lammps(dlsym(RTLD_DEFAULT, name))) continue;
    const uintptr_t slot = lib->l_addr + r.r_offset;
    if (slot >= objects.relro_begin && slot < objects.relro_end) continue;  // read-only after relocation: leave it
    *reinterpret_cast<void**>(slot) = reinterpret_cast<void*>(lib->l_addr + sym.st_value);
    rebound.emplace_back(name);
  }
  return rebound;
}

}  // namespace
#endif

std::vector<std::string> bind_torch_blas_to_torch() {
#if defined(__GLIBC__) && defined(__x86_64__)
  static const std::vector<std::string> rebound = rebind_torch_blas_slots();  // once per process
  return rebound;
#else
  return {};
#endif
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Metadata Metadata::parse(const std::map<std::string, std::string>& raw) {
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = raw.find(key);
    if (it == raw.end())
      throw Error("artifact metadata has no '" + key + "': this file was not written by `vivace export`");
    return it->second;
  };
  Metadata m;
  m.raw = raw;
  m.contract_version = static_cast<int>(to_double("contract_version", get("contract_version")));
  if (m.contract_version != kContractVersion)
    throw Error("artifact contract version " + std::to_string(m.contract_version) +
                " is not supported by this build (expects " + std::to_string(kContractVersion) +
                "); re-export the model with a matching vivace");
  m.model_kind = get("model_kind");
  m.type_names = split_words(get("type_names"));
  if (m.type_names.empty()) throw Error("artifact metadata lists no type names");
  m.r_max = to_double("r_max", get("r_max"));
  if (!(m.r_max > 0.0)) throw Error("artifact metadata r_max must be positive");
  // a (T, T) table of the type pairs, or nothing where the key is absent or empty
  auto pair_table = [&](const std::string& key) {
    std::vector<double> table;
    auto it = raw.find(key);
    if (it == raw.end()) return table;
    for (const auto& w : split_words(it->second)) table.push_back(to_double(key, w));
    const size_t t = m.type_names.size();
    if (!table.empty() && table.size() != t * t)
      throw Error("artifact metadata " + key + " has " + std::to_string(table.size()) + " entries, expected " +
                  std::to_string(t * t));
    return table;
  };
  m.edge_type_cutoffs = pair_table("edge_type_cutoffs");
  m.shortest_distances = pair_table("shortest_distances");
  m.message_passing_depth = static_cast<int>(to_double("message_passing_depth", get("message_passing_depth")));
  auto group = raw.find("edges_per_group");
  if (group != raw.end()) m.edges_per_group = static_cast<int64_t>(to_double("edges_per_group", group->second));
  if (m.edges_per_group < 0) throw Error("artifact metadata edges_per_group must not be negative");
  auto layers = raw.find("exchange_layers");
  if (layers != raw.end() && !layers->second.empty()) {
    m.exchange_layers = static_cast<int>(to_double("exchange_layers", layers->second));
    for (const auto& w : split_words(raw.count("feature_widths") ? raw.at("feature_widths") : ""))
      m.feature_widths.push_back(static_cast<int>(to_double("feature_widths", w)));
    if (m.exchange_layers < 0 || static_cast<int>(m.feature_widths.size()) != m.exchange_layers)
      throw Error("artifact metadata exchange_layers and feature_widths disagree");
    for (const auto& w : split_words(raw.count("radial_widths") ? raw.at("radial_widths") : ""))
      m.radial_widths.push_back(static_cast<int>(to_double("radial_widths", w)));
    if (!m.radial_widths.empty() && static_cast<int>(m.radial_widths.size()) != m.exchange_layers)
      throw Error("artifact metadata exchange_layers and radial_widths disagree");
  }
  m.model_dtype = get("model_dtype");
  m.units = get("units");
  m.device = get("device");
  return m;
}

double Metadata::cutoff(int center_type, int neighbor_type) const {
  if (edge_type_cutoffs.empty()) return r_max;
  return edge_type_cutoffs[static_cast<size_t>(center_type) * type_names.size() + neighbor_type];
}

struct Model::Impl {
  std::string path;
  std::string format;
  Metadata metadata;
  torch::Device device{torch::kCPU};
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> aoti;
  torch::jit::Module script;
  double last_model_seconds = 0.0;
  std::vector<double> isolated;  // per type: the energy of an atom without neighbors
  std::mutex busy;

  int device_index = -1;
  std::map<std::string, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> programs;  // loaded on first use

  // Copies of the AOTInductor model for groups run side by side (runner k > 0 uses copies[k - 1]); TorchScript
  // modules run concurrently as they are.
  std::vector<std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> copies;

  void ensure_runners(int count) {
    if (!aoti) return;
    while (static_cast<int>(copies.size()) + 1 < count)
      copies.push_back(std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          path, "model", false, 1, static_cast<c10::DeviceIndex>(device_index)));
  }

  std::vector<torch::Tensor> run(std::vector<torch::Tensor> inputs, int runner = 0) {
    if (aoti) return runner == 0 ? aoti->run(inputs) : copies.at(runner - 1)->run(inputs);
    std::vector<torch::jit::IValue> args(inputs.begin(), inputs.end());
    auto out = script.forward(args).toTuple();
    return {out->elements().at(0).toTensor(), out->elements().at(1).toTensor()};
  }

  // Another program of the artifact, by name: a model in the AOTInductor package, a submodule in TorchScript.
  std::vector<torch::Tensor> run_program(const std::string& name, std::vector<torch::Tensor> inputs) {
    if (aoti) {
      auto& loader = programs[name];
      if (!loader)
        loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
            path, name, false, 1, static_cast<c10::DeviceIndex>(device_index));
      return loader->run(inputs);
    }
    std::vector<torch::jit::IValue> args(inputs.begin(), inputs.end());
    auto out = script.attr(name).toModule().forward(args);
    if (out.isTensor()) return {out.toTensor()};
    std::vector<torch::Tensor> tensors;
    for (const auto& e : out.toTuple()->elements()) tensors.push_back(e.toTensor());
    return tensors;
  }
};

namespace {

// Above this many edges, a graph of local nodes only runs through the layer programs in groups.
constexpr int64_t kWholeProgramEdges = int64_t(1) << 17;

// The smallest group a strictly local model's graph is split into so that threads run groups side by side.
constexpr int64_t kSideBySideEdges = 512;

// Atom types of a host graph inside [0, T).
void check_types(const Graph& g, int T) {
  for (int64_t i = 0; i < g.num_nodes; ++i)
    if (g.atom_types[i] < 0 || g.atom_types[i] >= T)
      throw Error("atom type index " + std::to_string(g.atom_types[i]) + " is outside the model's " +
                  std::to_string(T) + " types");
}

// The padding edge of a graph without edges: one self-edge beyond every cutoff, which contributes nothing.
torch::Tensor far_edge(const Metadata& meta) {
  double far = meta.r_max;
  for (double c : meta.edge_type_cutoffs) far = std::max(far, c);
  auto vectors = torch::zeros({1, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  vectors[0][0] = 2.0 * far + 1.0;
  return vectors;
}

// The exchange of a graph without other nodes.
class NoExchange : public FeatureExchange {
 public:
  void fill(double*, int) override {}
  void drain(double*, int) override {}
};

void check_readable(const std::string& path) {
  if (!std::ifstream(path, std::ios::binary).good())
    throw Error("cannot open model artifact '" + path + "': no such file or not readable");
}

std::string format_of(const std::string& path) {
  if (ends_with(path, ".pt2")) return "aotinductor";
  if (ends_with(path, ".pth") || ends_with(path, ".pt")) return "torchscript";
  throw Error("model artifact '" + path + "' must end in .pt2 (AOTInductor) or .pth (TorchScript)");
}

}  // namespace

Metadata Model::read_metadata(const std::string& path) {
  check_readable(path);
  const std::string format = format_of(path);
  std::map<std::string, std::string> raw;
  try {
    if (format == "aotinductor") {
      for (const auto& kv : torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model"))
        raw[kv.first] = kv.second;
    } else {
      torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
      torch::jit::load(path, torch::kCPU, extra);
      raw = parse_key_values(extra[kMetadataFile]);
    }
  } catch (const c10::Error& e) {
    throw Error("cannot load model artifact '" + path + "' as " + format + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Error("cannot load model artifact '" + path + "' as " + format + ": " + e.what());
  }
  return Metadata::parse(raw);
}

Model::Model(const std::string& path, int device_index) : impl_(std::make_unique<Impl>()) {
  (void)kernels_version();  // the operators artifacts may call are registered (libvivace_ops.so is loaded)
  impl_->path = path;
  impl_->device_index = device_index;
  check_readable(path);
  if (device_index >= 0) impl_->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  const std::string want_device = device_index >= 0 ? "cuda" : "cpu";

  try {
    std::map<std::string, std::string> raw;
    impl_->format = format_of(path);
    if (impl_->format == "aotinductor") {
      impl_->aoti = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
          path, "model", false, 1, static_cast<c10::DeviceIndex>(device_index));
      for (const auto& kv : impl_->aoti->get_metadata()) raw[kv.first] = kv.second;
    } else {
      torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
      impl_->script = torch::jit::load(path, impl_->device, extra);
      impl_->script.eval();
      raw = parse_key_values(extra[kMetadataFile]);
    }
    impl_->metadata = Metadata::parse(raw);
    // On the CPU, the exporter's group size for this model (Allegro.cpu_edges_per_group, NequIP's
    // EDGES_PER_GROUP); for artifacts without one, those defaults. On a GPU the whole graph runs at once
    // unless asked otherwise.
    const int64_t suggested = impl_->metadata.edges_per_group;
    const int64_t fallback = impl_->metadata.strictly_local() ? 1024 : 4096;
    edges_per_group_ = device_index >= 0 ? 0 : (suggested > 0 ? suggested : fallback);
  } catch (const c10::Error& e) {
    throw Error("cannot load model artifact '" + path + "' as " + impl_->format + ": " +
                e.what_without_backtrace());
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {  // AOTInductor's loader throws std::runtime_error
    throw Error("cannot load model artifact '" + path + "' as " + impl_->format + ": " + e.what());
  }
  if (impl_->metadata.device != want_device)
    throw Error("model artifact '" + path + "' was compiled for " + impl_->metadata.device +
                " but is being run on " + want_device + "; export it again with --device " + want_device);
}

Model::~Model() = default;

void Model::set_edges_per_group(int64_t edges) {
  if (edges < 0) throw Error("edges per group must be 0 (whole graph) or positive");
  edges_per_group_ = edges;
}

const Metadata& Model::metadata() const { return impl_->metadata; }
const std::string& Model::format() const { return impl_->format; }

void Model::evaluate(const Graph& g, double* atomic_energy, double* edge_forces) {
  // one evaluation at a time per model: callers may share it across threads (the Python bindings release
  // the GIL), and the runner, the timings and the isolated-energy cache are per model
  std::lock_guard<std::mutex> lock(impl_->busy);
  const int T = impl_->metadata.num_types();
  if (g.memory_device >= 0) {  // arrays in GPU memory: zero and check them where they are
    const auto on = torch::TensorOptions().device(torch::kCUDA, static_cast<c10::DeviceIndex>(g.memory_device));
    torch::from_blob(atomic_energy, {g.num_nodes}, on.dtype(torch::kFloat64)).zero_();
    torch::from_blob(edge_forces, {g.num_edges, 3}, on.dtype(torch::kFloat64)).zero_();
    if (g.num_nodes == 0 || g.num_local == 0) return;
    auto types = torch::from_blob(const_cast<int64_t*>(g.atom_types), {g.num_nodes}, on.dtype(torch::kInt64));
    const int64_t low = types.min().item<int64_t>(), high = types.max().item<int64_t>();
    if (low < 0 || high >= T)
      throw Error("atom type index " + std::to_string(low < 0 ? low : high) + " is outside the model's " +
                  std::to_string(T) + " types");
    impl_->last_model_seconds = run_graph(g, atomic_energy, edge_forces);
    return;
  }
  std::fill(atomic_energy, atomic_energy + g.num_nodes, 0.0);
  std::fill(edge_forces, edge_forces + 3 * g.num_edges, 0.0);
  // No local node: nothing counts, nothing moves. No node at all: nothing to run.
  if (g.num_nodes == 0 || g.num_local == 0) return;

  check_types(g, T);

  const bool side_by_side = at::get_num_threads() > 1 && g.num_edges >= 2 * kSideBySideEdges;
  if (impl_->metadata.strictly_local() && edges_per_group_ > 0 && (g.num_edges > edges_per_group_ || side_by_side)) {
    evaluate_by_center_groups(g, atomic_energy, edge_forces);
  } else if (g.num_nodes == g.num_local && g.num_edges > kWholeProgramEdges && edges_per_group_ > 0 &&
             impl_->metadata.exchange_layers > 0 && !impl_->metadata.radial_widths.empty()) {
    // a large graph of its own nodes only: the layer programs in groups bound the memory (NequIP, 12288
    // atoms, 516k edges: 3.0 GB peak whole, 0.5 GB in groups of 4096 edges, 1.2x the time)
    NoExchange none;
    run_layers(g, none, atomic_energy, edge_forces);
  } else {
    impl_->last_model_seconds = run_graph(g, atomic_energy, edge_forces);
  }
}

double Model::run_graph(const Graph& g, double* atomic_energy, double* edge_forces, int runner) {
  // A graph without edges is padded with one self-edge beyond every cutoff: it contributes exactly zero,
  // and the model still returns each node's isolated-atom energy.
  const int64_t E = std::max<int64_t>(g.num_edges, 1);
  const auto memory = g.memory_device < 0 ? torch::Device(torch::kCPU)
                                          : torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(g.memory_device));
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(memory);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(memory);
  torch::Tensor vectors, index;
  if (g.num_edges == 0) {
    vectors = far_edge(impl_->metadata);
    index = torch::zeros({2, 1}, i64.device(torch::kCPU));
  } else {
    vectors = torch::from_blob(const_cast<double*>(g.edge_vectors), {E, 3}, f64);
    index = torch::stack({torch::from_blob(const_cast<int64_t*>(g.edge_center), {E}, i64),
                          torch::from_blob(const_cast<int64_t*>(g.edge_neighbor), {E}, i64)});
  }
  auto types = torch::from_blob(const_cast<int64_t*>(g.atom_types), {g.num_nodes}, i64);
  auto n_local = torch::tensor(g.num_local, i64.device(torch::kCPU));

  std::vector<torch::Tensor> out;
  double seconds = 0.0;
  try {
    const auto& dev = impl_->device;
    // the model's device is the current one while it runs, whatever device the calling thread had chosen
    c10::OptionalDeviceGuard guard;
    if (dev.is_cuda()) guard.reset_device(dev);
    std::vector<torch::Tensor> inputs{vectors.to(dev), index.to(dev), types.to(dev), n_local.to(dev)};
    const auto start = std::chrono::steady_clock::now();
    out = impl_->run(std::move(inputs), runner);
    if (dev.is_cuda()) torch::cuda::synchronize(dev.index());
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } catch (const c10::Error& e) {
    throw Error(std::string("model evaluation failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {  // AOTInductor's runner throws std::runtime_error
    throw Error(std::string("model evaluation failed: ") + e.what());
  }
  if (out.size() != 2) throw Error("model artifact returned " + std::to_string(out.size()) + " outputs, expected 2");
  if (out[0].numel() != g.num_nodes || out[1].numel() != 3 * E)
    throw Error("model artifact returned outputs of the wrong shape");
  if (g.memory_device < 0) {
    auto energy = out[0].to(torch::kCPU, torch::kFloat64).contiguous();
    auto forces = out[1].to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy_n(energy.data_ptr<double>(), g.num_nodes, atomic_energy);
    if (g.num_edges > 0) std::copy_n(forces.data_ptr<double>(), 3 * g.num_edges, edge_forces);
  } else {
    torch::from_blob(atomic_energy, {g.num_nodes}, f64).copy_(out[0].reshape({g.num_nodes}));
    if (g.num_edges > 0) torch::from_blob(edge_forces, {g.num_edges, 3}, f64).copy_(out[1].reshape({g.num_edges, 3}));
    torch::cuda::synchronize(static_cast<int64_t>(g.memory_device));
  }
  return seconds;
}

// A strictly local model: the energy of center i depends on i's own edges, and on each neighbor only
// through its type, so the graph runs as groups of consecutive centers with all their edges. A group's
// graph holds its centers [n0, n1) and one stand-in node per type for every neighbor outside them.
void Model::evaluate_by_center_groups(const Graph& g, double* atomic_energy, double* edge_forces) {
  const int64_t E = g.num_edges;
  const int T = impl_->metadata.num_types();

  // edges in center order (LAMMPS's lists already are; other callers may not be)
  std::vector<int64_t> order;
  const double* vectors = g.edge_vectors;
  const int64_t* center = g.edge_center;
  const int64_t* neighbor = g.edge_neighbor;
  std::vector<double> sorted_vectors;
  std::vector<int64_t> sorted_center, sorted_neighbor;
  if (!std::is_sorted(center, center + E)) {
    order.resize(E);
    for (int64_t e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return center[a] < center[b]; });
    sorted_vectors.resize(3 * E);
    sorted_center.resize(E);
    sorted_neighbor.resize(E);
    for (int64_t e = 0; e < E; ++e) {
      std::copy_n(vectors + 3 * order[e], 3, &sorted_vectors[3 * e]);
      sorted_center[e] = center[order[e]];
      sorted_neighbor[e] = neighbor[order[e]];
    }
    vectors = sorted_vectors.data();
    center = sorted_center.data();
    neighbor = sorted_neighbor.data();
  }

  // nodes that are no group's center keep their isolated-atom energy
  const auto& isolated = isolated_energies();
  for (int64_t i = 0; i < g.num_nodes; ++i) atomic_energy[i] = isolated[g.atom_types[i]];

  // with several threads, groups small enough that each thread has one (but not below kSideBySideEdges)
  const int64_t threads = at::get_num_threads();
  const int64_t share = std::max(kSideBySideEdges, (E + threads - 1) / threads);
  const int64_t size = threads > 1 ? std::min(edges_per_group_, share) : edges_per_group_;
  std::vector<std::pair<int64_t, int64_t>> groups;  // edge ranges of whole centers
  for (int64_t e0 = 0; e0 < E;) {
    int64_t e1 = std::min(e0 + size, E);
    while (e1 < E && center[e1] == center[e1 - 1]) ++e1;
    groups.emplace_back(e0, e1);
    e0 = e1;
  }

  // Groups run side by side, one per thread, each on one thread: the nested parallel regions of the model's
  // kernels are inactive inside this one. On two cores this is about twice as fast as each group's
  // kernels split between the threads (benchmarks/results/model_speed.txt).
  const int workers = static_cast<int>(std::min<int64_t>(threads, groups.size()));
  impl_->ensure_runners(workers);
  std::vector<double> seconds(std::max(workers, 1), 0.0);
  auto run_groups = [&](int64_t first, int64_t last, int runner) {
    std::vector<int64_t> group_center, group_neighbor, group_types;
    std::vector<double> group_energy, group_forces;
    for (int64_t k = first; k < last; ++k) {
      const auto [e0, e1] = groups[k];
      const int64_t n0 = center[e0], n1 = center[e1 - 1] + 1, count = n1 - n0;
      group_types.assign(g.atom_types + n0, g.atom_types + n1);
      for (int t = 0; t < T; ++t) group_types.push_back(t);
      group_center.resize(e1 - e0);
      group_neighbor.resize(e1 - e0);
      for (int64_t e = e0; e < e1; ++e) {
        group_center[e - e0] = center[e] - n0;
        const int64_t j = neighbor[e];
        group_neighbor[e - e0] = (j >= n0 && j < n1) ? j - n0 : count + g.atom_types[j];
      }
      Graph group;
      group.edge_vectors = vectors + 3 * e0;
      group.edge_center = group_center.data();
      group.edge_neighbor = group_neighbor.data();
      group.atom_types = group_types.data();
      group.num_nodes = count + T;
      group.num_edges = e1 - e0;
      group.num_local = std::clamp<int64_t>(g.num_local - n0, 0, count);
      group_energy.resize(group.num_nodes);
      group_forces.resize(3 * group.num_edges);
      seconds[runner] += run_graph(group, group_energy.data(), group_forces.data(), runner);

      std::copy_n(group_energy.data(), count, atomic_energy + n0);
      if (order.empty())
        std::copy_n(group_forces.data(), 3 * group.num_edges, edge_forces + 3 * e0);
      else
        for (int64_t e = e0; e < e1; ++e) std::copy_n(&group_forces[3 * (e - e0)], 3, edge_forces + 3 * order[e]);
    }
  };
  const int64_t count = static_cast<int64_t>(groups.size());
  if (workers <= 1) {
    run_groups(0, count, 0);
  } else {
    at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) { run_groups(first, last, at::get_thread_num()); });
  }
  // the model's time: the busiest runner's (they run at once)
  impl_->last_model_seconds = *std::max_element(seconds.begin(), seconds.end());
}

namespace {

// A group of consecutive centers [n0, n1) with all their edges, as one program's graph: centers renumbered
// from 0, then the other nodes its edges reach (`others`, node numbers of the whole graph; N for padding).
struct GroupGraph {
  int64_t e0, e1, n0, n1;
  torch::Tensor vectors, index, center_types, other_types, others;
  torch::Tensor slot;  // the radial row of each of its edges
};

// The radial MLPs depend on an edge's length only, so i -> j and j -> i share one row of their table. For
// edges sorted by center (all centers in [0, Nc)): edge e reads row slot[e], computed for edge row_edges[r].
// An edge i -> j with i > j reads its reverse's row where both occur here exactly once (an edge to a ghost,
// or a pair repeated through periodic images, has a row of its own): reverse_pair_rows in models/common.py.
void reverse_pair_rows(const std::vector<int64_t>& center, const std::vector<int64_t>& neighbor, int64_t Nc,
                       std::vector<int64_t>& slot, std::vector<int64_t>& row_edges) {
  const int64_t E = static_cast<int64_t>(center.size());
  std::vector<int64_t> first(Nc + 1, 0);  // center i's edges: [first[i], first[i + 1])
  for (int64_t e = 0; e < E; ++e) ++first[center[e] + 1];
  for (int64_t i = 0; i < Nc; ++i) first[i + 1] += first[i];
  std::vector<int64_t> by_neighbor(E);  // within each center's range, its edges sorted by neighbor
  std::iota(by_neighbor.begin(), by_neighbor.end(), int64_t(0));
  auto neighbor_less = [&](int64_t a, int64_t b) { return neighbor[a] < neighbor[b]; };
  for (int64_t i = 0; i < Nc; ++i)
    std::sort(by_neighbor.begin() + first[i], by_neighbor.begin() + first[i + 1], neighbor_less);
  auto only_edge = [&](int64_t i, int64_t j) -> int64_t {  // the edge i -> j if it occurs exactly once, else -1
    auto begin = by_neighbor.begin() + first[i], end = by_neighbor.begin() + first[i + 1];
    auto lo = std::lower_bound(begin, end, j, [&](int64_t e, int64_t n) { return neighbor[e] < n; });
    return (lo != end && neighbor[*lo] == j && (lo + 1 == end || neighbor[*(lo + 1)] != j)) ? *lo : -1;
  };
  std::vector<int64_t> reverse(E, -1);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t i = center[e], j = neighbor[e];
    if (j < i && only_edge(i, j) == e) reverse[e] = only_edge(j, i);
  }
  slot.assign(E, -1);
  row_edges.clear();
  for (int64_t e = 0; e < E; ++e)
    if (reverse[e] < 0) {
      slot[e] = static_cast<int64_t>(row_edges.size());
      row_edges.push_back(e);
    }
  for (int64_t e = 0; e < E; ++e)
    if (reverse[e] >= 0) slot[e] = slot[reverse[e]];
}

}  // namespace

// Layer by layer with the features of the other nodes exchanged (see exchange.py for the programs):
//   W = radial(rows); h_1 = layer_0(g, w_0); fill; h_k+1 = layer_k(g, h_k, w_k); fill ... h_L;
//   e, dE/dh_L, dE/dr = readout(g, h_L);
//   dE/dh_k, dE/dr, dE/dw_k += layer_k_vjp(g, h_k, w_k, dE/dh_k+1); drain ...;
//   dE/dr, dE/dw_0 += layer_0_vjp(g, w_0, dE/dh_1); dE/dr[rows] += radial_vjp(rows, dE/dW).
// Each layer program runs on groups of whole centers of about edges_per_group() edges, so that no per-edge
// intermediate outgrows a group; the features of every node are kept between layers (they are per node), and
// the radial weights of every row of the table (one row per pair of reverse edges where both are here)
// until their layer's gradient is done: the radial MLPs run once forward and once backward per row.
// A rank without local nodes runs no program but joins every fill and drain.
void Model::evaluate_exchanging(const Graph& g, FeatureExchange& exchange, double* atomic_energy, double* edge_forces) {
  std::lock_guard<std::mutex> lock(impl_->busy);
  run_layers(g, exchange, atomic_energy, edge_forces);
}

void Model::run_layers(const Graph& g, FeatureExchange& exchange, double* atomic_energy, double* edge_forces) {
  const Metadata& meta = impl_->metadata;
  const int L = meta.exchange_layers;
  if (L == 0)
    throw Error("the artifact holds no programs for exchanging features between ranks (a " + meta.model_kind +
                " model, or an export by an older vivace): export it again, or use the ghost shell");
  if (static_cast<int>(meta.radial_widths.size()) != L)
    throw Error("the artifact's programs for exchanging features are those of an older vivace (radial MLPs inside "
                "the layer programs): export it again, or use the ghost shell");
  if (g.memory_device >= 0) throw Error("exchanging features needs the graph in host memory");
  const int64_t N = g.num_nodes, Nc = g.num_local, No = N - Nc, E = g.num_edges;
  const int T = meta.num_types();
  std::fill(atomic_energy, atomic_energy + N, 0.0);
  std::fill(edge_forces, edge_forces + 3 * E, 0.0);
  check_types(g, T);
  for (int64_t e = 0; e < E; ++e)
    if (g.edge_center[e] < 0 || g.edge_center[e] >= Nc)
      throw Error("exchanging features needs every edge to start at a local node");
  impl_->last_model_seconds = 0.0;

  const auto& dev = impl_->device;
  const auto dtype = meta.model_dtype == "float32" ? torch::kFloat32 : torch::kFloat64;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);

  // edges in center order (LAMMPS's lists already are)
  std::vector<int64_t> order(E);
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  if (!std::is_sorted(g.edge_center, g.edge_center + E))
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return g.edge_center[a] < g.edge_center[b]; });
  std::vector<double> vectors(3 * std::max<int64_t>(E, 1));
  std::vector<int64_t> center(E), neighbor(E);
  for (int64_t e = 0; e < E; ++e) {
    std::copy_n(g.edge_vectors + 3 * order[e], 3, &vectors[3 * e]);
    center[e] = g.edge_center[order[e]];
    neighbor[e] = g.edge_neighbor[order[e]];
  }

  // the radial table's rows, computed in chunks of `per_chunk` rows
  std::vector<int64_t> edge_slot, row_edges;
  reverse_pair_rows(center, neighbor, Nc, edge_slot, row_edges);
  const int64_t R = static_cast<int64_t>(row_edges.size());
  std::vector<double> row_vectors(3 * R);
  std::vector<int64_t> row_types(2 * R);  // center types, then neighbor types
  for (int64_t r = 0; r < R; ++r) {
    const int64_t e = row_edges[r];
    std::copy_n(&vectors[3 * e], 3, &row_vectors[3 * r]);
    row_types[r] = g.atom_types[center[e]];
    row_types[R + r] = g.atom_types[neighbor[e]];
  }
  const int64_t per_chunk = edges_per_group_ > 0 ? 4 * edges_per_group_ : std::max<int64_t>(R, 1);
  auto row_chunk = [&](int64_t r0, int64_t r1) -> std::vector<torch::Tensor> {
    return {torch::from_blob(&row_vectors[3 * r0], {r1 - r0, 3}, f64).to(dev),
            torch::from_blob(&row_types[r0], {r1 - r0}, i64).to(dev),
            torch::from_blob(&row_types[R + r0], {r1 - r0}, i64).to(dev)};
  };
  auto edge_rows = torch::tensor(at::ArrayRef<int64_t>(row_edges), i64).to(dev);

  // the groups, each with at least one edge (a self-edge beyond every cutoff) and one other node (no edges)
  std::vector<GroupGraph> groups;
  const int64_t per_group = edges_per_group_ > 0 ? edges_per_group_ : std::max<int64_t>(E, 1);
  std::vector<int64_t> slot(N, -1);
  for (int64_t e0 = 0, n0 = 0; n0 < Nc;) {
    int64_t e1 = std::min(e0 + per_group, E);
    while (e1 < E && center[e1] == center[e1 - 1]) ++e1;
    const int64_t n1 = e1 < E ? center[e1] : Nc;  // centers without edges join the group before them
    GroupGraph grp{e0, e1, n0, n1};
    std::vector<int64_t> index(2 * std::max<int64_t>(e1 - e0, 1), 0), others, other_types;
    const int64_t k = n1 - n0;
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t j = neighbor[e];
      index[e - e0] = center[e] - n0;
      if (j >= n0 && j < n1) {
        index[(e1 - e0) + (e - e0)] = j - n0;
        continue;
      }
      if (slot[j] < 0) {
        slot[j] = static_cast<int64_t>(others.size());
        others.push_back(j);
        other_types.push_back(g.atom_types[j]);
      }
      index[(e1 - e0) + (e - e0)] = k + slot[j];
    }
    for (int64_t j : others) slot[j] = -1;
    grp.vectors = e1 == e0 ? far_edge(meta) : torch::from_blob(&vectors[3 * e0], {e1 - e0, 3}, f64);
    grp.index = torch::from_blob(index.data(), {2, std::max<int64_t>(e1 - e0, 1)}, i64).clone();
    grp.center_types = torch::from_blob(const_cast<int64_t*>(g.atom_types) + n0, {k}, i64);
    if (others.empty()) {  // the programs' padding node, of type 0, reading the zero row N of the features
      others.push_back(N);
      other_types.push_back(0);
    }
    grp.other_types = torch::from_blob(other_types.data(), {static_cast<int64_t>(other_types.size())}, i64).clone();
    grp.others = torch::from_blob(others.data(), {static_cast<int64_t>(others.size())}, i64).to(dev, false, true);
    if (e1 > e0) grp.slot = torch::from_blob(&edge_slot[e0], {e1 - e0}, i64).to(dev, false, true);
    grp.vectors = grp.vectors.to(dev);
    grp.index = grp.index.to(dev);
    grp.center_types = grp.center_types.to(dev);
    grp.other_types = grp.other_types.to(dev);
    groups.push_back(std::move(grp));
    e0 = e1;
    n0 = n1;
  }

  auto run_program = [&](const std::string& name, std::vector<torch::Tensor> inputs) {
    c10::OptionalDeviceGuard guard;
    if (dev.is_cuda()) guard.reset_device(dev);
    const auto start = std::chrono::steady_clock::now();
    std::vector<torch::Tensor> out;
    try {
      out = impl_->run_program(name, std::move(inputs));
      if (dev.is_cuda()) torch::cuda::synchronize(dev.index());
    } catch (const c10::Error& e) {
      throw Error("model program " + name + " failed: " + e.what_without_backtrace());
    } catch (const std::exception& e) {
      throw Error("model program " + name + " failed: " + e.what());
    }
    impl_->last_model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
  };
  auto run = [&](const std::string& name, const GroupGraph& grp, std::initializer_list<torch::Tensor> extra) {
    std::vector<torch::Tensor> inputs{grp.vectors, grp.index, grp.center_types, grp.other_types};
    inputs.insert(inputs.end(), extra.begin(), extra.end());
    return run_program(name, std::move(inputs));
  };
  auto forces = torch::zeros({std::max<int64_t>(E, 1), 3}, f64.device(dev));
  auto add_forces = [&](const GroupGraph& grp, const torch::Tensor& grad_vectors) {
    if (grp.e1 > grp.e0) forces.slice(0, grp.e0, grp.e1).add_(grad_vectors.to(torch::kFloat64));
  };
  const auto features = torch::TensorOptions().dtype(dtype).device(dev);
  auto padded = [&](int width) { return torch::zeros({N + 1, width}, features); };

  // every layer's radial weights of every row, W_k (R, radial_widths[k]); a group's edges read theirs by slot
  std::vector<torch::Tensor> W(L), grad_W(L);
  for (int k = 0; k < L; ++k) W[k] = torch::empty({R, meta.radial_widths[k]}, features);
  for (int64_t r0 = 0; r0 < R; r0 += per_chunk) {
    const int64_t r1 = std::min(r0 + per_chunk, R);
    auto table = run_program("exchange_radial", row_chunk(r0, r1)).at(0);
    for (int k = 0, column = 0; k < L; column += meta.radial_widths[k++])
      W[k].slice(0, r0, r1).copy_(table.narrow(1, column, meta.radial_widths[k]));
  }
  auto weights = [&](const GroupGraph& grp, int k) {  // the padding edge's weights are zero
    return grp.e1 > grp.e0 ? W[k].index_select(0, grp.slot) : torch::zeros({1, meta.radial_widths[k]}, features);
  };
  auto add_weight_grads = [&](const GroupGraph& grp, int k, const torch::Tensor& grad_w) {
    if (grp.e1 > grp.e0) grad_W[k].index_add_(0, grp.slot, grad_w.to(grad_W[k].dtype()));
  };

  // node features after each layer, all N nodes (and the padding row)
  std::vector<torch::Tensor> h(L + 1);
  std::vector<double> rows;
  for (int k = 0; k < L; ++k) {
    h[k + 1] = padded(meta.feature_widths[k]);
    for (const auto& grp : groups) {
      auto out = k == 0 ? run("exchange_layer_0", grp, {weights(grp, 0)})
                        : run("exchange_layer_" + std::to_string(k), grp,
                              {h[k].slice(0, grp.n0, grp.n1), h[k].index_select(0, grp.others), weights(grp, k)});
      h[k + 1].slice(0, grp.n0, grp.n1).copy_(out[0]);
    }
    if (k + 1 == L) break;  // the last features are read by their own centers only
    const int width = meta.feature_widths[k];
    auto host = h[k + 1].slice(0, 0, N).to(torch::kCPU, torch::kFloat64).contiguous();
    rows.assign(host.data_ptr<double>(), host.data_ptr<double>() + N * width);
    exchange.fill(rows.data(), width);
    if (No > 0)
      h[k + 1].slice(0, Nc, N).copy_(torch::from_blob(rows.data() + Nc * width, {No, width}, f64));
  }

  auto energy = torch::zeros({std::max<int64_t>(Nc, 1)}, f64.device(dev));
  auto grad = padded(meta.feature_widths[L - 1]);
  for (const auto& grp : groups) {
    auto out = run("exchange_readout", grp, {h[L].slice(0, grp.n0, grp.n1)});
    energy.slice(0, grp.n0, grp.n1).copy_(out[0]);
    grad.slice(0, grp.n0, grp.n1).copy_(out[1]);
    add_forces(grp, out[2]);
  }
  for (int k = L - 1; k >= 0; --k) {
    auto next = k > 0 ? padded(meta.feature_widths[k - 1]) : torch::Tensor();
    grad_W[k] = torch::zeros_like(W[k]);
    for (const auto& grp : groups) {
      auto cotangent = grad.slice(0, grp.n0, grp.n1);
      if (k == 0) {
        auto out = run("exchange_layer_0_vjp", grp, {weights(grp, 0), cotangent});
        add_forces(grp, out[0]);
        add_weight_grads(grp, 0, out[1]);
        continue;
      }
      auto out = run("exchange_layer_" + std::to_string(k) + "_vjp", grp,
                     {h[k].slice(0, grp.n0, grp.n1), h[k].index_select(0, grp.others), weights(grp, k), cotangent});
      next.slice(0, grp.n0, grp.n1).add_(out[0]);
      next.index_add_(0, grp.others, out[1]);
      add_forces(grp, out[2]);
      add_weight_grads(grp, k, out[3]);
    }
    W[k] = torch::Tensor();  // no later program reads this layer's weights
    if (k == 0) break;
    const int width = meta.feature_widths[k - 1];
    auto host = next.slice(0, 0, N).to(torch::kCPU, torch::kFloat64).contiguous();
    rows.assign(host.data_ptr<double>(), host.data_ptr<double>() + N * width);
    exchange.drain(rows.data(), width);
    grad = padded(width);
    if (Nc > 0) grad.slice(0, 0, Nc).copy_(torch::from_blob(rows.data(), {Nc, width}, f64));
  }
  for (int64_t r0 = 0; r0 < R; r0 += per_chunk) {
    const int64_t r1 = std::min(r0 + per_chunk, R);
    auto inputs = row_chunk(r0, r1);
    std::vector<torch::Tensor> grads;
    for (const auto& gw : grad_W) grads.push_back(gw.slice(0, r0, r1));
    inputs.push_back(torch::cat(grads, 1));
    auto grad_rows = run_program("exchange_radial_vjp", std::move(inputs)).at(0);
    forces.index_add_(0, edge_rows.slice(0, r0, r1), grad_rows.to(torch::kFloat64));
  }
  if (Nc == 0) return;

  auto host_energy = energy.to(torch::kCPU).contiguous();
  auto host_forces = forces.to(torch::kCPU).contiguous();
  std::copy_n(host_energy.data_ptr<double>(), Nc, atomic_energy);
  for (int64_t e = 0; e < E; ++e) std::copy_n(host_forces.data_ptr<double>() + 3 * e, 3, edge_forces + 3 * order[e]);
}

const std::vector<double>& Model::isolated_energies() {
  if (impl_->isolated.empty()) {
    const int T = impl_->metadata.num_types();
    std::vector<int64_t> types(T);
    for (int t = 0; t < T; ++t) types[t] = t;
    Graph g;
    g.atom_types = types.data();
    g.num_nodes = T;
    g.num_local = T;
    std::vector<double> energy(T);
    run_graph(g, energy.data(), nullptr);
    impl_->isolated = energy;
  }
  return impl_->isolated;
}

double Model::last_model_seconds() const { return impl_->last_model_seconds; }

void set_num_threads(int n) {
  if (n > 0) at::set_num_threads(n);
}
int get_num_threads() { return at::get_num_threads(); }
int cuda_device_count() { return static_cast<int>(torch::cuda::device_count()); }

}  // namespace vivace
