"""SAM-family models written for genmedseg: LiteMedSAM's TinyViT and SAM's ViT image encoders, SAM's prompt encoder
and mask decoder, loading LiteMedSAM and SAM checkpoints strictly (see :mod:`genmedseg.sam.model`)."""

from genmedseg.sam.model import SAM, FrozenSAM, installed_litemedsam, load_sam

__all__ = ["SAM", "FrozenSAM", "installed_litemedsam", "load_sam"]
