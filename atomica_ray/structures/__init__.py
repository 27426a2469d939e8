"""Structure files (PDB / mmCIF) -> ATOMICA items, equal to ATOMICA's own `process_pdbs` output.

  read        gemmi parsing, assembled with Biopython's chain / residue / altloc rules (first model)
  blocks      ATOMICA's block rules: residues, nucleotides, UNK, ligand atoms; element and position codes
  fragments   principal-subgraph fragments of ligands (PS_300 / PS_500, RDKit), ATOMICA's fallback
  interface   the interface cut at `interface_dist_th`
  complexes   global blocks, segments, ids, block_to_pdb_indexes
  index       the rows to process: ATOMICA's index CSV or a folder of structure files
  rows        one row -> its items, or the reason it has none
  parallel    rows on Ray tasks, in order, with a progress bar
  dataset     items -> the project's Parquet dataset, errors.csv, notes.csv

Needs the `structures` extra (`pip install 'atomica-ray[structures]'`): gemmi, and RDKit + networkx for PS_300.
"""

from .index import Row, read_rows
from .rows import Options, RowResult, process_row

__all__ = ["Options", "Row", "RowResult", "process_row", "read_rows"]
