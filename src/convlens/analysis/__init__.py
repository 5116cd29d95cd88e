"""Work over a whole data set: streaming top-k scans with receptive-field patches, unit
reports, and maps of the network's codes (PCA, t-SNE, UMAP) with nearest neighbours."""

from convlens.analysis.scan import Hit, ScanResult, scan, scan_indices
from convlens.analysis.state import LayerState, ScanState, map_batch, merge, merge_states
from convlens.analysis.store import ScanMeta, load_scan, save_scan

__all__ = [
    "Hit",
    "LayerState",
    "ScanMeta",
    "ScanResult",
    "ScanState",
    "load_scan",
    "map_batch",
    "merge",
    "merge_states",
    "save_scan",
    "scan",
    "scan_indices",
]
