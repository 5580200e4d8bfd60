from .dataset import Batch, Structure, collate, load_structures, read_frames, structures_from_frames, type_names_of
from .formats import Frame, read_data
from .graph import neighbor_graph

__all__ = [
    "Batch",
    "Frame",
    "Structure",
    "collate",
    "load_structures",
    "neighbor_graph",
    "read_data",
    "read_frames",
    "structures_from_frames",
    "type_names_of",
]
