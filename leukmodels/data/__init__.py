"""The C-NMC 2019 data layer: discover a data root into a manifest, split it by patient, decode it once.

    manifest = discover("~/data/C-NMC_Leukemia")          # path, label, patient, source, image_id
    splits = split_by_patient(manifest, seed=0)             # train / val / test, no patient in two sets
    train = decode(splits["train"], size=224)               # uint8 N x 3 x 224 x 224, cached, memory-mapped
"""
from leukmodels.data.decode import DecodedSet, decode, default_cache_dir, load_image
from leukmodels.data.errors import DataError
from leukmodels.data.layout import discover, parse_name, summary
from leukmodels.data.splits import check_disjoint, kfold_by_patient, patient_table, split_by_patient

__all__ = ["DataError", "DecodedSet", "check_disjoint", "decode", "default_cache_dir", "discover", "kfold_by_patient",
           "load_image", "parse_name", "patient_table", "split_by_patient", "summary"]
