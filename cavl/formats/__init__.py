"""Readers for the official files of the seven datasets (COCO captions, Visual Genome,
VQA v2, VCR, NLVR2, Flickr30k Karpathy split, Flickr30k Entities).

Every reader raises :class:`FormatError` naming the file and the record when a file does
not have the official structure.
"""

from .errors import FormatError, SpecError

__all__ = ["FormatError", "SpecError"]
