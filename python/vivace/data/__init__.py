from .dataset import Batch, Graphs, Structure, collate, load_graphs, load_structures, structures_from_frames, type_names_of
from .formats import Frame, read_data
from .graph import neighbor_graph

__all__ = [
    "Batch",
    "Frame",
    "Graphs",
    "Structure",
    "collate",
    "load_graphs",
    "load_structures",
    "neighbor_graph",
    "read_data",
    "structures_from_frames",
    "type_names_of",
]
