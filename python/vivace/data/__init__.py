from .dataset import Batch, Structure, collate, read_frames, structures_from_frames, type_names_of
from .graph import neighbor_graph

__all__ = ["Batch", "Structure", "collate", "read_frames", "structures_from_frames", "type_names_of", "neighbor_graph"]
