"""Differences between the Blender versions the extension supports (blender_manifest.toml: 4.2 LTS on), in one
place. Every other module calls these instead of testing versions or attributes itself.

| what                               | 4.2 – 4.3            | 4.4 – 4.5            | 5.0 on                        |
|------------------------------------|----------------------|----------------------|-------------------------------|
| a sequence editor's strips         | `.sequences`         | `.strips`            | `.strips`                     |
| movie output of a render           | `file_format`        | `file_format`        | `media_type`, then the format |
| an action's F-curves               | `action.fcurves`     | layered (+ legacy)   | layered only                  |
| `bpy.data.materials.new()`         | no node tree         | no node tree         | a node tree (Principled BSDF) |

Checks are by attribute, not by version number, so a point release that back-ports an API keeps working.
Only `bpy` objects passed in are touched; the module imports nothing from Blender itself (so it imports, and
its pure parts test, without bpy).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def sequencer_strips(editor: Any) -> Any:
    """The strip collection of a SequenceEditor: `strips` (4.4+) or `sequences` (4.2, 4.3)."""
    strips = getattr(editor, "strips", None)
    return strips if strips is not None else editor.sequences


def set_movie_output(image_settings: Any, file_format: str = "FFMPEG") -> None:
    """Make a render write a movie: 5.0+ first switches the output's media type to video (the movie formats
    are not valid values of file_format before that); earlier versions list FFMPEG among the image formats."""
    if hasattr(image_settings, "media_type"):
        image_settings.media_type = "VIDEO"
    image_settings.file_format = file_format


def ensure_node_tree(material: Any) -> Any:
    """The material's node tree, created (Principled BSDF -> Material Output) where `materials.new()` made none
    (before 5.0, where `use_nodes` switches it on; 5.0 always has one and deprecates the switch)."""
    if material.node_tree is None:
        material.use_nodes = True
    return material.node_tree


def action_fcurves(owner: Any, action: Any) -> Iterator[Any]:
    """The F-curves of ID `owner` in `action`: the owner's slot's channelbags in a layered action (4.4+; the
    only kind in 5.0), else the action's own list."""
    slot = getattr(owner.animation_data, "action_slot", None)
    layers = getattr(action, "layers", None)
    if slot is not None and layers:
        for layer in layers:
            for strip in layer.strips:
                bag = strip.channelbag(slot)
                if bag is not None:
                    yield from bag.fcurves
        return
    yield from getattr(action, "fcurves", ())
