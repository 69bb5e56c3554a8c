"""The training corpus: (W+, image, landmarks) samples of a frozen generator, sharded and checksummed.

Writing: `build_corpus(CorpusConfig(...), out)` (the `stylerig corpus` command). Reading: `Corpus`,
`CorpusDataset`, `CorpusStream`. Format and guarantees: docs/corpus.md.

Names are imported on first use, so that `stylerig --help` and other commands don't pay for importing torch.
"""

from importlib import import_module

_WHERE = {
    "config": ("CorpusConfig", "CorpusConfigError", "CorpusError", "CorpusIntegrityError", "sample_latents",
               "sample_seeds"),
    "dataset": ("Corpus", "CorpusDataset", "CorpusSample", "CorpusStream", "epoch_order"),
    "landmarks": ("ExactLandmarks", "FanLandmarks", "LandmarkDetector", "make_detector", "register_detector"),
    "writer": ("BuildReport", "build_corpus", "describe_generator", "resolve_generator", "synthesize_samples"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
