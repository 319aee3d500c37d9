"""Data: one reader per source -> `datasets.DatasetDict` with 'train', 'validation' (and 'test' when the source
has one, kept apart from training and model selection) -> loaders of decoded uint8 pixels -> batched transforms on the training device (emotion.data.augment).

Every reader returns the same columns: `image` (datasets Image), `label` (ClassLabel over the 8 classes, or the 7
without contempt with --classes 7), `id` (string); AffectNet and AffectNet+ add `valence` and `arousal` (NaN where
absent). Knows nothing of the model: preprocessing numbers come in as arguments.
"""
from __future__ import annotations

from emotion.data.augment import AugmentRecipe, recipe_for
from emotion.data.loaders import (build_dataloader, choose_input_colour, class_counts, class_weights, decoded_pixels,
                                  load_splits)
from emotion.data.transforms import build_transform

__all__ = ["AugmentRecipe", "build_dataloader", "build_transform", "choose_input_colour", "class_counts", "class_weights",
           "decoded_pixels", "load_splits", "recipe_for"]
