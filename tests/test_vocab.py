"""The vocabulary must match ATOMICA's index for index (checkpoints embed these indices)."""

import numpy as np
import pytest

from atomica_ray.data.vocab import MODALITIES, get_vocab


@pytest.mark.parametrize("method,length,n_masked", [(None, 150, 146), ("PS_300", 440, 436), ("PS_500", 640, 636)])
def test_sizes(method, length, n_masked):
    v = get_vocab(method)
    assert len(v) == length
    assert v.num_masked_classes == n_masked
    assert v.num_atom_types == 121
    assert v.num_atom_positions == 15


def test_special_and_family_indices():
    v = get_vocab("PS_300")
    assert [v.symbol_to_idx(s) for s in "#*?&"] == [0, 1, 2, 3]
    assert [v.abrv_to_idx(a) for a in ("PAD", "MASK", "UNK", "<G>")] == [0, 1, 2, 3]
    assert (v.pad_idx, v.mask_idx, v.unk_idx, v.glb_idx) == (0, 1, 2, 3)
    assert v.abrv_to_idx("GLY") == 4 and v.symbol_to_idx("G") == 4
    assert v.abrv_to_idx("PRO") == 23 and v.abrv_to_idx("CYS") == 22
    assert [v.abrv_to_idx(b) for b in ("DA", "DG", "DC", "DT", "RA", "RG", "RC", "RU")] == list(range(24, 32))
    # element blocks: 32 + (Z - 1)
    assert v.symbol_to_idx("h") == 32 and v.abrv_to_idx("H") == 32
    assert v.element_block("C") == 37 and v.abrv_to_idx("N") == 38 and v.abrv_to_idx("O") == 39
    assert v.abrv_to_idx("Og") == 149
    assert v.idx_to_symbol(150) == "0" and v.idx_to_abrv(150) == "NCC(=O)NCC(=O)NCC(=O)NCC=O"
    # unknown symbols fall back to UNK, unknown atoms to the atom mask (ATOMICA's behaviour)
    assert v.abrv_to_idx("XYZ") == 2 and v.atom_to_idx("Xx") == 1


def test_fragments_skip_single_atoms():
    v = get_vocab("PS_300")
    frag_abrvs = [v.idx_to_abrv(i) for i in v.fragment_range]
    assert len(frag_abrvs) == 290
    assert not {"B", "Br", "C", "Cl", "F", "I", "N", "O", "P", "S"} & set(frag_abrvs)
    # fragment symbols are the line index in the vocabulary file (the single atoms are its last 10 lines)
    assert [v.idx_to_symbol(i) for i in v.fragment_range] == [str(i) for i in range(290)]


def test_atoms():
    v = get_vocab(None)
    assert v.idx2atom[:3] == ["p", "m", "g"]
    assert (v.atom_pad_idx, v.atom_mask_idx, v.atom_global_idx) == (0, 1, 2)
    assert v.atom_to_idx("H") == 3 and v.atom_to_idx("C") == 8 and v.atom_to_idx("Og") == 120
    assert v.idx_to_atom(8) == "C"


def test_masked_classes():
    v = get_vocab("PS_300")
    m = v.block_to_masked_class
    assert m.shape == (440,) and m.dtype == np.int64
    assert (m[:4] == -1).all()
    assert m[4] == 0 and m[439] == 435
    assert np.array_equal(v.maskable_blocks[m[4:]], np.arange(4, 440))


def test_modalities_and_cache():
    assert MODALITIES == {"PP": 0, "PL": 1, "Pion": 2, "Ppeptide": 3, "PRNA": 4, "PDNA": 5, "RNAL": 6, "CSD": 7}
    assert get_vocab("PS_300") is get_vocab("PS_300")
    with pytest.raises(ValueError, match="fragmentation_method"):
        get_vocab("PS_9")
