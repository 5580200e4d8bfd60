"""The LAMMPS units styles a vivace model can be trained in, and conversion of labels into them.

A model's numbers are in the style it declares: readers convert every file's energies, forces and stresses
into it, the ZBL term takes its Coulomb constant from it, the artifact carries its name (the pair style
refuses any other), and the ASE calculator converts back to eV and eV/A.
"""

from dataclasses import dataclass
from typing import Dict

# 1 eV in kcal/mol: e N_A / 4184 J (CODATA 2018, exact SI constants)
KCAL_PER_MOL_PER_EV = 1.602176634e-19 * 6.02214076e23 / 4184.0


@dataclass(frozen=True)
class UnitStyle:
    name: str
    energy: str  # name of the energy unit
    energy_in_ev: float  # one energy unit, in eV
    coulomb_constant: float  # e^2 / (4 pi eps0), in energy x Angstrom
    pressure_per_energy_density: float  # LAMMPS's nktv2p: pressure unit per energy/A^3


# Both styles measure length in Angstrom, so a conversion between them scales energies only.
STYLES: Dict[str, UnitStyle] = {
    "metal": UnitStyle("metal", "eV", 1.0, 14.399645478425668, 1.6021765e6),  # pressure in bar
    "real": UnitStyle("real", "kcal/mol", 1.0 / KCAL_PER_MOL_PER_EV, 14.399645478425668 * KCAL_PER_MOL_PER_EV, 68568.415),  # atm
}


def unit_style(name: str) -> UnitStyle:
    """The style called `name`, or a ValueError that names it and the supported ones."""
    if name not in STYLES:
        raise ValueError(f"units '{name}' is not supported: vivace models are trained in LAMMPS units {' or '.join(STYLES)}")
    return STYLES[name]
