"""The tiny world: fictional worlds in the official dataset layouts, their seed registry, and the
reasoning steps and training pairs of the two T5s pretrained on them (``tools/`` drives them)."""
