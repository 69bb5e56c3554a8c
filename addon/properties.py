"""Scene settings of the add-on (Scene.stylerig): live preview, batch rendering, which rig blocks drive the image."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, IntProperty, PointerProperty, StringProperty


class StylerigSceneSettings(bpy.types.PropertyGroup):
    live_size: IntProperty(name="Preview size", default=256, min=16, max=4096,  # type: ignore[valid-type]
                           description="side of the live preview image in pixels")
    output_dir: StringProperty(name="Output", default="//stylerig/", subtype="DIR_PATH",  # type: ignore[valid-type]
                               description="folder of the batch render: frame_0001.png ... and stylerig.mp4")
    batch_size: IntProperty(name="Size", default=0, min=0, max=4096,  # type: ignore[valid-type]
                            description="side of the rendered frames in pixels (0: the generator's resolution)")
    write_mp4: BoolProperty(name="MP4", default=True,  # type: ignore[valid-type]
                            description="also encode the frames as an H.264 MP4 (Blender's FFmpeg)")
    final_quality: BoolProperty(name="Final quality", default=False,  # type: ignore[valid-type]
                                description="closed-loop editing: the engine checks each frame with a per-image "
                                "fit and corrects it, so the face follows the rig closer; seconds per frame "
                                "(needs --rignet)")
    exact_match: BoolProperty(name="Exact match", default=False,  # type: ignore[valid-type]
                              description="Match rig to face refines the DFR's reading with a per-image fit: "
                              "more accurate, a few seconds per face, Blender waits (needs --rignet)")
    drive_pose: BoolProperty(name="Pose", default=True,  # type: ignore[valid-type]
                             description="head rotation and translation drive the image (pose RigNet)")
    drive_expression: BoolProperty(name="Expression", default=True,  # type: ignore[valid-type]
                                   description="blendshapes drive the image (expression RigNet)")
    drive_illumination: BoolProperty(name="Lighting", default=True,  # type: ignore[valid-type]
                                     description="the lights drive the image (illumination RigNet)")
    drive_identity: BoolProperty(name="Identity", default=False,  # type: ignore[valid-type]
                                 description="identity shape keys drive the image (needs an identity RigNet)")
    drive_albedo: BoolProperty(name="Albedo", default=False,  # type: ignore[valid-type]
                               description="albedo properties drive the image (needs an albedo RigNet)")

    def modes(self) -> tuple[str, ...]:
        return tuple(m for m in ("pose", "expression", "illumination", "identity", "albedo")
                     if getattr(self, f"drive_{m}"))


CLASSES = (StylerigSceneSettings,)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(CLASSES)


def register() -> None:
    _register_classes()
    bpy.types.Scene.stylerig = PointerProperty(type=StylerigSceneSettings)  # type: ignore[attr-defined]


def unregister() -> None:
    del bpy.types.Scene.stylerig  # type: ignore[attr-defined]
    _unregister_classes()


def settings(context) -> StylerigSceneSettings:
    return context.scene.stylerig  # type: ignore[no-any-return]
