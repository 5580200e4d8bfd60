// Registers pair_style allegro/kk (and its /device and /host forms, as LAMMPS's own Kokkos styles have) with
// a Kokkos LAMMPS. `-sf kk` turns `pair_style allegro` into allegro/kk.
#include "pair_allegro_kokkos.h"
#include "plugin_api.h"

namespace {

template <class DeviceType>
void *create(void *lmp) {
  return new LAMMPS_NS::PairAllegroKokkos<DeviceType>(static_cast<LAMMPS_NS::LAMMPS *>(lmp));
}

#ifdef LMP_KOKKOS_GPU
typedef LMPHostType HostType;
#else
typedef LMPDeviceType HostType;  // one execution space: host and device styles are the same class
#endif

}  // namespace

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc) {
  vivace_plugin::keep_loaded(reinterpret_cast<void *>(&lammpsplugin_init));
  const char *info = "vivace Allegro pair style for Kokkos (graph and forces on the Kokkos device)";
  vivace_plugin::register_pair(lmp, handle, regfunc, "allegro/kk", info, &create<LMPDeviceType>);
  vivace_plugin::register_pair(lmp, handle, regfunc, "allegro/kk/device", info, &create<LMPDeviceType>);
  vivace_plugin::register_pair(lmp, handle, regfunc, "allegro/kk/host", info, &create<HostType>);
}
