"""The training corpus: (W+, image, landmarks) samples of a frozen generator, sharded and checksummed.

Writing: `build_corpus(CorpusConfig(...), out)` (the `stylerig corpus` command). Reading: `Corpus`,
`CorpusDataset`, `CorpusStream`. Format and guarantees: docs/corpus.md.

Names are imported on first use, so that `stylerig --help` and other commands don't pay for importing torch.
"""

from ..lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "config": ("CorpusConfig", "CorpusConfigError", "CorpusError", "CorpusIntegrityError", "sample_latents",
               "sample_seeds"),
    "dataset": ("Corpus", "CorpusDataset", "CorpusSample", "CorpusStream", "batch_indices", "epoch_order"),
    "landmarks": ("DlibLandmarks", "ExactLandmarks", "FanLandmarks", "LandmarkDetector", "MediaPipeLandmarks",
                  "PreflightLandmarks", "detector_names", "make_detector", "register_detector", "resolve_landmarks"),
    "writer": ("BuildReport", "build_corpus", "describe_generator", "detect_landmarks", "resolve_generator",
               "synthesize_samples"),
})
