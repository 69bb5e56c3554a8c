"""The training corpus: (W+, image, landmarks) samples of a frozen generator, sharded and checksummed.

Writing: `build_corpus(CorpusConfig(...), out)` (the `stylerig corpus` command). Reading: `Corpus`,
`CorpusDataset`, `CorpusStream`. Format and guarantees: docs/corpus.md.
"""

from .config import (
    CorpusConfig,
    CorpusConfigError,
    CorpusError,
    CorpusIntegrityError,
    sample_latents,
    sample_seeds,
)
from .dataset import Corpus, CorpusDataset, CorpusSample, CorpusStream, epoch_order
from .landmarks import ExactLandmarks, FanLandmarks, LandmarkDetector, make_detector, register_detector
from .writer import BuildReport, build_corpus, describe_generator, resolve_generator, synthesize_samples

__all__ = [
    "BuildReport", "Corpus", "CorpusConfig", "CorpusConfigError", "CorpusDataset", "CorpusError",
    "CorpusIntegrityError", "CorpusSample", "CorpusStream", "ExactLandmarks", "FanLandmarks", "LandmarkDetector",
    "build_corpus", "describe_generator", "epoch_order", "make_detector", "register_detector", "resolve_generator",
    "sample_latents", "sample_seeds", "synthesize_samples",
]
