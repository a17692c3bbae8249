"""SMIRK (Retsinas et al., CVPR 2024; official code github.com/georgeretsi/smirk) as an fbench method.

- `data`: SMIRK's per-sample preparation of fbench shards and its dataset mix;
- `augment`: SMIRK's training augmentations.
"""
