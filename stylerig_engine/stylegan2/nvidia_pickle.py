"""Read NVIDIA's StyleGAN2 network pickles without running anything from them.

NVIDIA's pickles (stylegan2-ada-pytorch, stylegan3; the files on NGC) hold a dict with 'G', 'D', 'G_ema',
'training_set_kwargs' and 'augment_pipe'. Every network module in them is pickled through
`torch_utils.persistence`: the pickle stream says "call torch_utils.persistence._reconstruct_persistent_obj(meta)"
with ``meta = dict(type='class', version=6, module_src=<the whole networks.py source>, class_name='Generator',
state=<the module's __dict__>)``; NVIDIA's function `exec`s module_src to rebuild the class. Tensors are
pickled by torch's ``__reduce_ex__``: ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
with each storage as ``torch.storage._load_from_bytes(<legacy torch.save bytes>)``, which calls
``torch.load(..., weights_only=False)``; parameters through ``torch._utils._rebuild_parameter``. Plain numbers
in the module state are often numpy scalars (``numpy.core.multiarray.scalar`` + ``numpy.dtype``); the init
kwargs are ``dnnlib.util.EasyDict``.

`RestrictedUnpickler` resolves globals only through an explicit allow-list and maps each allowed name to
a function of ours:

* ``_reconstruct_persistent_obj`` -> `PersistentObject`, a record of class name and state; module_src is
  kept as text and never executed;
* ``_load_from_bytes`` -> ``torch.load(bytes, weights_only=True)`` (torch's own restricted loader);
* tensor / parameter rebuild -> torch's functions after type checks;
* ``collections.OrderedDict``, ``builtins.set/frozenset``, ``dnnlib.util.EasyDict`` (a plain dict subclass),
  numpy scalars and arrays of non-object dtypes, torch dtypes/Size/device.

Anything else (``os.system``, ``builtins.exec``, ``builtins.open``, ``subprocess``, any other class) raises
`UnsafePickleError` naming it, before it could be called. The BUILD opcode (``__setstate__``) is only honoured
for the allowed types. From the records, `generator_from_pickle_data` takes the architecture
hyper-parameters (init kwargs, checked against the module attributes) and the parameters and buffers by name,
and builds our `Generator`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import os
import pickle
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from .networks import Generator


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle asks for something outside the allow-list; nothing of it was run."""


class UnsupportedNetworkError(ValueError):
    """The pickle is safe but holds a network this loader does not convert (StyleGAN3, TensorFlow, resnet...)."""


# ----------------------------------------------------------------------------------------------------------
# Stand-ins for the allowed globals


class PersistentObject:
    """What `torch_utils.persistence._reconstruct_persistent_obj(meta)` would have built, as inert data.

    ``class_name``: the class in NVIDIA's module (e.g. 'Generator'); ``state``: the module's ``__dict__``
    (``_parameters``, ``_buffers``, ``_modules``, ``_init_args``, ``_init_kwargs``, attributes);
    ``module_src``: NVIDIA's source, as text, never executed.
    """

    def __init__(self, meta: dict):
        if not isinstance(meta, dict):
            raise UnsafePickleError("persistent object: meta is not a dict")
        self.type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src")
        self.state = meta.get("state") or {}
        if self.type != "class" or not isinstance(self.class_name, str) or not isinstance(self.state, dict):
            raise UnsafePickleError(f"persistent object with unexpected meta (type={self.type!r})")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("BUILD on a persistent object is not part of the persistence format")

    # Convenience accessors over the nn.Module state.
    def child(self, name: str) -> PersistentObject:
        modules = self.state.get("_modules") or {}
        child = modules.get(name)
        if not isinstance(child, PersistentObject):
            raise UnsupportedNetworkError(f"{self.class_name} has no submodule {name!r}")
        return child

    def children(self) -> dict[str, PersistentObject]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if isinstance(v, PersistentObject)}

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


def _reconstruct_persistent_obj(meta: dict) -> PersistentObject:
    return PersistentObject(meta)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Any) -> None:
        if state:
            raise UnsafePickleError("EasyDict with instance state")


class _OrderedDict(collections.OrderedDict):
    def __setstate__(self, state: Any) -> None:
        if state:
            raise UnsafePickleError("OrderedDict with instance state")


def _check_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy data of dtype {dtype!r} (object dtypes are refused)")
    return dtype


def _np_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(obj, str):
        raise UnsafePickleError(f"numpy.dtype({obj!r})")
    dtype = np.dtype(obj, align=bool(align), copy=bool(copy))
    return _check_dtype(dtype)


def _np_scalar(dtype: np.dtype, data: Any = None) -> Any:
    dtype = _check_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise UnsafePickleError("numpy scalar with unexpected data")
    return np.frombuffer(data, dtype=dtype)[0]


class _SafeNDArray(np.ndarray):
    """numpy array whose unpickling (``__setstate__``) refuses object dtypes."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("numpy array with unexpected state")
        _check_dtype(state[-3])
        if not isinstance(state[-1], (bytes, bytearray)):
            raise UnsafePickleError("numpy array with non-bytes data")
        super().__setstate__(state)


def _np_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not _SafeNDArray:
        raise UnsafePickleError(f"numpy _reconstruct of {cls!r}")
    return np.ndarray.__new__(_SafeNDArray, shape, _check_dtype(np.dtype(dtype)))


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode with unexpected arguments")
    return text.encode("latin1")


def _load_storage_from_bytes(data: Any) -> Any:
    """Safe replacement of ``torch.storage._load_from_bytes``: torch's restricted loader, CPU only."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("storage payload is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError(f"storage payload holds {type(storage).__name__}, not a storage")
    return storage


def _check_hooks(hooks: Any) -> None:
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise UnsafePickleError("tensor with backward hooks")


def _is_int_tuple(v: Any) -> bool:
    return isinstance(v, (tuple, list, torch.Size)) and all(isinstance(i, int) for i in v)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafePickleError("tensor rebuilt from something that is not a storage")
    if not isinstance(storage_offset, int) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise UnsafePickleError("tensor with malformed size/stride")
    _check_hooks(backward_hooks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # torch checks that size/stride/offset stay inside the storage.
        return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride),
                                               bool(requires_grad), collections.OrderedDict())


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("parameter rebuilt from something that is not a tensor")
    _check_hooks(backward_hooks)
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16",
                 "int32", "int64", "uint8", "bool", "long", "int", "short")
}

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): _OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _SafeNDArray,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    **{("torch", name): dtype for name, dtype in _TORCH_DTYPES.items()},
}

# Types whose __setstate__ (the BUILD opcode) may be called.
_BUILD_OK = (np.dtype, _SafeNDArray, EasyDict, _OrderedDict, PersistentObject)


class RestrictedUnpickler(pickle._Unpickler):  # the Python implementation, so BUILD can be restricted too
    """`pickle.Unpickler` that resolves globals only through `ALLOWED_GLOBALS`.

    Refused globals raise `UnsafePickleError("... refuses <module>.<name> ...")` when the stream names them,
    before anything could call them. Persistent ids (torch.save's zip format) are refused as well.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names in protocol 0-2 streams, as pickle does
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        target = ALLOWED_GLOBALS.get((module, name))
        if target is None:
            if module == "dnnlib.tflib.network":
                raise UnsupportedNetworkError(
                    "this is a legacy TensorFlow StyleGAN2 pickle; use NVIDIA's PyTorch pickles (see "
                    "`stylerig weights list`) or convert it with NVIDIA's legacy.py in their own environment")
            raise UnsafePickleError(
                f"refusing to load pickle: it references {module}.{name}, which is not on the allow-list "
                "of StyleGAN2 network pickles (nothing from the file was executed)")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing to load pickle: persistent ids are not part of NVIDIA's pickle format")

    def load_build(self) -> None:
        inst = self.stack[-2]  # the stack ends with [..., inst, state]
        if not isinstance(inst, _BUILD_OK):
            raise UnsafePickleError(f"refusing to load pickle: BUILD (__setstate__) on {type(inst).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def load_newobj(self) -> None:
        args = self.stack[-1]
        cls = self.stack[-2]
        if cls not in (EasyDict, _OrderedDict, set, frozenset, _SafeNDArray, torch.Size):
            raise UnsafePickleError(f"refusing to load pickle: NEWOBJ of {cls!r}")
        del args
        super().load_newobj()

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        cls = self.stack[-3]
        if cls not in (EasyDict, _OrderedDict, set, frozenset, _SafeNDArray, torch.Size):
            raise UnsafePickleError(f"refusing to load pickle: NEWOBJ_EX of {cls!r}")
        super().load_newobj_ex()

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex


def restricted_load(file: str | os.PathLike | io.IOBase) -> Any:
    """Unpickle `file` (a path or a binary file object) with `RestrictedUnpickler`."""
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as f:
            return RestrictedUnpickler(f).load()
    return RestrictedUnpickler(file).load()


# ----------------------------------------------------------------------------------------------------------
# From records to our Generator


def module_state_dict(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a pickled module tree, under nn.Module state-dict names."""
    out: dict[str, torch.Tensor] = {}
    state = obj.state
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            out[prefix + name] = value.detach() if isinstance(value, torch.Tensor) else value
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = value
    for name, child in obj.children().items():
        out.update(module_state_dict(child, prefix + name + "."))
    for key, value in out.items():
        if not isinstance(value, torch.Tensor):
            raise UnsupportedNetworkError(f"{key} is a {type(value).__name__}, not a tensor")
    return out


_TOP_LEVEL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels")
_MAPPING_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
_SYNTHESIS_KEYS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "resample_filter", "use_noise",
                   "activation", "kernel_size"}
# Accepted but without effect on the function the network computes.
_SYNTHESIS_IGNORED = {"fp16_channels_last", "fused_modconv_default", "channels_last"}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, EasyDict -> dict, recursively (for JSON configs)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def generator_config(G: PersistentObject) -> dict[str, Any]:
    """Constructor arguments of our `Generator` for a pickled NVIDIA StyleGAN2 generator.

    Reads ``init_kwargs`` (both layouts: stylegan2-ada-pytorch's nested ``synthesis_kwargs`` and stylegan3's
    flattened synthesis arguments), then fills and checks them from the module attributes, which are what
    the network actually was (their defaults differ between the two code bases: num_fp16_res 0 vs 4,
    conv_clamp None vs 256).
    """
    if G.class_name != "Generator":
        raise UnsupportedNetworkError(f"expected a Generator, found {G.class_name}")
    synthesis = G.child("synthesis")
    blocks = {k: v for k, v in synthesis.children().items() if k.startswith("b") and k[1:].isdigit()}
    if not blocks:
        names = ", ".join(synthesis.children()) or "none"
        raise UnsupportedNetworkError(
            f"not a StyleGAN2 synthesis network (submodules: {names}); StyleGAN3 generators are not supported")

    args = list(G.attr("_init_args") or ())
    kwargs = dict(G.attr("_init_kwargs") or {})
    kwargs.update(dict(zip(_TOP_LEVEL, args)))
    cfg: dict[str, Any] = {}
    for key in _TOP_LEVEL:
        value = kwargs.pop(key, G.attr(key))
        if value is None:
            raise UnsupportedNetworkError(f"the pickled generator does not say its {key}")
        cfg[key] = int(value)
    mapping_kwargs = dict(kwargs.pop("mapping_kwargs", None) or {})
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", None) or {})
    synthesis_kwargs.update(kwargs)  # stylegan3 passes synthesis arguments flat

    unknown = set(mapping_kwargs) - _MAPPING_KEYS
    if unknown:
        raise UnsupportedNetworkError(f"unsupported mapping arguments: {sorted(unknown)}")
    architecture = synthesis_kwargs.pop("architecture", "skip")
    for block in blocks.values():
        architecture = block.attr("architecture", architecture)
    if architecture != "skip":
        raise UnsupportedNetworkError(f"only the 'skip' generator architecture (config F) is supported, "
                                      f"this one is {architecture!r}")
    for key in _SYNTHESIS_IGNORED:
        synthesis_kwargs.pop(key, None)
    unknown = set(synthesis_kwargs) - _SYNTHESIS_KEYS
    if unknown:
        raise UnsupportedNetworkError(f"unsupported synthesis arguments: {sorted(unknown)}")

    # The module attributes are authoritative where they exist.
    mapping = G.child("mapping")
    if mapping.attr("num_layers") is not None:
        mapping_kwargs["num_layers"] = int(mapping.attr("num_layers"))
    fc0 = mapping.children().get("fc0")
    if fc0 is not None and fc0.attr("bias_gain") is not None:
        mapping_kwargs["lr_multiplier"] = float(fc0.attr("bias_gain"))
    if fc0 is not None and fc0.attr("activation") is not None:
        mapping_kwargs["activation"] = str(fc0.attr("activation"))
    ordered = sorted(blocks.values(), key=lambda b: int(b.attr("resolution") or 0))
    if all(b.attr("use_fp16") is not None for b in ordered):
        # NVIDIA: the blocks at resolutions >= max(2 ** (log2(res) + 1 - num_fp16_res), 8) use fp16, so the
        # number of fp16 blocks is num_fp16_res (saturating at all but the 4x4 block).
        synthesis_kwargs["num_fp16_res"] = sum(bool(b.attr("use_fp16")) for b in ordered)
    synthesis_kwargs.setdefault("num_fp16_res", 0)
    layer = ordered[0].children().get("conv1")
    if layer is not None and "conv_clamp" in layer.state:
        clamp = layer.attr("conv_clamp")
        synthesis_kwargs["conv_clamp"] = None if clamp is None else float(clamp)
    if layer is not None and layer.attr("use_noise") is not None:
        synthesis_kwargs["use_noise"] = bool(layer.attr("use_noise"))
    if layer is not None and layer.attr("activation") is not None:
        synthesis_kwargs["activation"] = str(layer.attr("activation"))
    if synthesis_kwargs.get("activation") == "lrelu":
        synthesis_kwargs.pop("activation")
    if synthesis_kwargs.get("use_noise") is True:
        synthesis_kwargs.pop("use_noise")
    cfg["mapping_kwargs"] = _plain(mapping_kwargs)
    cfg["synthesis_kwargs"] = _plain(synthesis_kwargs)
    return cfg


def generator_from_pickle_data(data: Any, key: str = "G_ema") -> Generator:
    """Build our Generator from the (restricted-)unpickled content of an NVIDIA network pickle."""
    net: Any
    if isinstance(data, PersistentObject):
        net = data
    elif isinstance(data, dict):
        net = data.get(key)
        if net is None and key == "G_ema":
            net = data.get("G")
        if not isinstance(net, PersistentObject):
            raise UnsupportedNetworkError(f"the pickle has no network {key!r} (keys: {sorted(map(str, data))})")
    else:
        raise UnsupportedNetworkError(f"not an NVIDIA network pickle (top level is a {type(data).__name__})")
    cfg = generator_config(net)
    G = Generator(**cfg)
    state = module_state_dict(net)
    ours = G.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise UnsupportedNetworkError(
            f"state of the pickled generator does not match the architecture {cfg}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise UnsupportedNetworkError(
                f"{name}: shape {tuple(tensor.shape)} in the pickle, {tuple(ours[name].shape)} expected for {cfg}")
    G.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return G.eval().requires_grad_(False)


def load_nvidia_pickle(path: str | os.PathLike, key: str = "G_ema") -> Generator:
    """Load the generator `key` ('G_ema' by default) of an NVIDIA StyleGAN2 network pickle, safely."""
    return generator_from_pickle_data(restricted_load(path), key=key)
