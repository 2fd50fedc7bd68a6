"""The label convention, everywhere: 1 = ALL (leukemic blast, the positive class), 0 = HEM (normal cell)."""
ALL, HEM = 1, 0
CLASS_NAMES = {ALL: "ALL", HEM: "HEM"}  # label -> name (a model's logits: index 0 HEM, 1 ALL)
CNMC_NAMES = {ALL: "all", HEM: "hem"}  # label -> C-NMC's folder name and file-name suffix (fold_0/all/..._all.bmp)
CLASS_LABEL = {name: label for label, name in CNMC_NAMES.items()}  # and back: C-NMC's folder or suffix -> label

__all__ = ["ALL", "HEM", "CLASS_NAMES", "CLASS_LABEL", "CNMC_NAMES"]
