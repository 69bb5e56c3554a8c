"""`stylerig assets ...`: install, inspect and import morphable face models."""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    assets = subparsers.add_parser("assets", help="install and inspect face models (ICT default, BFM import)",
                                   description="Install and inspect morphable face models.")
    sub = assets.add_subparsers(dest="assets_command", metavar="ACTION")
    assets.set_defaults(func=lambda args: (assets.print_help(), 2)[1])

    fetch = sub.add_parser("fetch", help="download (or convert from a local copy) and install a model",
                           description="Download the ICT Face Model Light (MIT) from its pinned GitHub commit, "
                                       "check every file's SHA-256 and convert it into the model cache.")
    fetch.add_argument("what", choices=["ict"], help="which model (only the ICT Face Model Light is downloadable)")
    fetch.add_argument("--from", dest="source", metavar="PATH",
                       help="convert a local copy instead: an ICT FaceXModel folder or an ICT pack folder")
    fetch.add_argument("--force", action="store_true", help="download and convert again even if installed")
    fetch.add_argument("--url", help="base URL of the ICT-FaceKit tree (default: the pinned GitHub commit; "
                                     "also $STYLERIG_ICT_URL)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    fetch.set_defaults(func=_cmd_fetch)

    info = sub.add_parser("info", help="print a model's summary and where it is cached")
    info.add_argument("name", nargs="?", default="ict-face-light",
                      help="model name or .npz path (default: ict-face-light)")
    info.set_defaults(func=_cmd_info)

    imp = sub.add_parser("import", help="convert a user-supplied Basel Face Model into the cache",
                         description="Convert BFM files you obtained yourself into a stylerig model "
                                     "(cm, our axes, N(0,1) coefficients, linear albedo).")
    imp.add_argument("format", choices=["bfm2009", "deep3d", "bfm2017"])
    imp.add_argument("files", nargs="+", metavar="FILE",
                     help="bfm2009: 01_MorphableModel.mat [Exp_Pca.bin std_exp.txt [BFM_exp_idx.mat]]; "
                          "deep3d: BFM_model_front.mat; bfm2017: model2017-1_*.h5")
    imp.add_argument("--out", required=True, metavar="NAME", help="model name in the cache (or a .npz path)")
    imp.add_argument("--landmarks", metavar="FILE", help="68 vertex ids in iBUG order (.npy, .json or text)")
    imp.add_argument("--one-based", action="store_true", help="the landmark file counts vertices from 1")
    imp.add_argument("--identity", type=int, help="keep only the first N identity components")
    imp.add_argument("--albedo", type=int, help="keep only the first N albedo components")
    imp.add_argument("--expression", type=int, help="keep only the first N expression components")
    imp.add_argument("--linear-colours", action="store_true",
                     help="the file's colours are linear, not sRGB-encoded (default: sRGB)")
    imp.set_defaults(func=_cmd_import)


def _cmd_fetch(args) -> int:
    from ..fileio import DownloadError
    from . import ModelNotAvailableError, default_model_path
    from .fetch import fetch_ict
    from .model import ModelFormatError

    path = default_model_path()
    if path.is_file() and not args.force and args.source is None:
        print(f"ict-face-light is already installed: {path} (use --force to fetch it again)")
        return 0
    try:
        model, out = fetch_ict(source=args.source, url=args.url, force=args.force, progress=not args.quiet)
    except (ModelFormatError, DownloadError, ModelNotAvailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"installed {model.name}: {out}")
    print(summary(model))
    return 0


def summary(model, path: Path | None = None) -> str:
    lines = [f"name:        {model.name}"]
    if path is not None:
        size = path.stat().st_size / 1e6
        lines.append(f"file:        {path} ({size:.1f} MB)")
    lines += [
        f"vertices:    {model.num_vertices}",
        f"triangles:   {len(model.triangles)}  (polygons: {len(model.polygon_start) - 1}, uvs: {len(model.uvs)})",
        f"identity:    {model.num_identity} components, N(0,1)",
        f"expression:  {model.num_expression} ({model.expression_prior})",
        (f"albedo:      {model.num_albedo} components ({', '.join(model.albedo_names[:10])}"
        f"{', ...' if model.num_albedo > 10 else ''})"),
        f"landmarks:   {len(model.landmarks)} (iBUG 68)",
        "regions:     " + ", ".join(f"{k} {int(v.sum())}" for k, v in model.regions.items()),
        f"extent cm:   {' x '.join(f'{x:.1f}' for x in (model.neutral.max(0) - model.neutral.min(0)))}",
    ]
    if src := model.meta.get("source"):
        lines.append(f"source:      {src}")
    if model.notice:
        lines.append(f"notice:      {model.notice.strip().splitlines()[0]}")
    return "\n".join(lines)


def _cmd_info(args) -> int:
    from . import DEFAULT_MODEL_NAME, find_ict_source, models_dir
    from .fetch import ict_download_root
    from .model import ModelFormatError, MorphableModel

    name = args.name
    path = Path(name) if name.endswith(".npz") else models_dir() / f"{name}.npz"
    print(f"model cache: {models_dir()}")
    if name == DEFAULT_MODEL_NAME:
        src = find_ict_source()
        print(f"ICT source:  {src if src else 'none found (run `stylerig assets fetch ict`)'}")
        root = ict_download_root()
        if (root / "manifest.json").is_file():
            print(f"downloads:   {root}")
    if not path.is_file():
        print(f"{name}: not installed ({path} does not exist)")
        if name == DEFAULT_MODEL_NAME:
            print("install it with `stylerig assets fetch ict` (or it is converted on first use from a local source)")
        return 1
    try:
        model = MorphableModel.load(path)
    except ModelFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(model, path))
    return 0


def _cmd_import(args) -> int:
    from . import install_model, models_dir
    from .bfm import import_bfm2009, import_bfm2017, import_deep3d
    from .model import ModelFormatError

    files = args.files
    try:
        if args.format == "bfm2009":
            if not args.landmarks:
                raise ModelFormatError("BFM 2009 has no 68-point landmarks: pass --landmarks FILE (68 vertex ids)")
            if len(files) not in (1, 3, 4):
                raise ModelFormatError("bfm2009 takes 01_MorphableModel.mat [Exp_Pca.bin std_exp.txt "
                                       "[BFM_exp_idx.mat]]")
            model = import_bfm2009(files[0], landmarks=args.landmarks, exp_pca=files[1] if len(files) > 1 else None,
                                   std_exp=files[2] if len(files) > 2 else None,
                                   exp_index=files[3] if len(files) > 3 else None, num_identity=args.identity,
                                   num_albedo=args.albedo, num_expression=args.expression, name=Path(args.out).stem,
                                   colour_space="linear" if args.linear_colours else "srgb",
                                   one_based_landmarks=args.one_based)
        elif args.format == "deep3d":
            model = import_deep3d(files[0], landmarks=args.landmarks, name=Path(args.out).stem,
                                  colour_space="linear" if args.linear_colours else "srgb")
        else:
            if not args.landmarks:
                raise ModelFormatError("BFM 2017 has no 68-point landmarks: pass --landmarks FILE (68 vertex ids)")
            model = import_bfm2017(files[0], landmarks=args.landmarks, name=Path(args.out).stem,
                                   num_identity=args.identity, num_albedo=args.albedo,
                                   num_expression=args.expression,
                                   colour_space="linear" if args.linear_colours else "srgb",
                                   one_based_landmarks=args.one_based)
    except ModelFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out.endswith(".npz") else models_dir() / f"{args.out}.npz"
    install_model(model, out)
    print(f"imported {args.format} as {model.name}: {out}")
    print(summary(model, out))
    return 0
