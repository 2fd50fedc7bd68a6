"""The label convention, everywhere: 1 = ALL (leukemic blast, the positive class), 0 = HEM (normal cell)."""
ALL, HEM = 1, 0
CLASS_NAMES = {ALL: "ALL", HEM: "HEM"}  # label -> name (a model's logits: index 0 HEM, 1 ALL)
CLASS_LABEL = {"all": ALL, "hem": HEM}  # C-NMC's folder and file-name suffix -> label

__all__ = ["ALL", "HEM", "CLASS_NAMES", "CLASS_LABEL"]
