// Registers vivace's pair styles with a running LAMMPS.
#include "pair_vivace.h"
#include "plugin_api.h"

namespace {

void *create_pair_allegro(void *lmp) {
  return new LAMMPS_NS::PairVivace(static_cast<LAMMPS_NS::LAMMPS *>(lmp), "allegro");
}

void *create_pair_nequip(void *lmp) {
  return new LAMMPS_NS::PairVivace(static_cast<LAMMPS_NS::LAMMPS *>(lmp), "nequip");
}

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  vivace_plugin::keep_loaded(reinterpret_cast<void *>(&lammpsplugin_init));
  vivace_plugin::register_pair(lmp, handle, regfunc, "allegro",
                               "vivace Allegro pair style (strictly local; .pt2 / .pth artifacts)", &create_pair_allegro);
  vivace_plugin::register_pair(lmp, handle, regfunc, "nequip",
                               "vivace NequIP pair style (message passing; .pt2 / .pth artifacts)", &create_pair_nequip);
}
