"""The synthetic text-video world used to train, test and evaluate the embedded model."""

from .world import (BACKGROUNDS, COLORS, DIRECTIONS, FPS, SHAPES, Clip, Scene, World, all_scenes,
                    held_out_scenes, parse_caption)

__all__ = ["BACKGROUNDS", "COLORS", "DIRECTIONS", "FPS", "SHAPES", "Clip", "Scene", "World",
           "all_scenes", "held_out_scenes", "parse_caption"]
