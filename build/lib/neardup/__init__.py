"""neardup: find near-duplicate images by perceptual hashing."""

__version__ = "0.1.0"
