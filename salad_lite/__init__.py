"""salad_lite: SALAD (Bozorgtabar et al., MICCAI 2020), self-supervised anomaly detection on X-rays.

The pieces, one module each: :mod:`~salad_lite.config` (frozen dataclasses and
profiles), :mod:`~salad_lite.models` (conv and ResNet-18 autoencoders),
:mod:`~salad_lite.memory` (memory bank), :mod:`~salad_lite.knn` (the exact
k-NN engine), :mod:`~salad_lite.losses` (Eqs. 1-3), :mod:`~salad_lite.trainer`
(progressive training), :mod:`~salad_lite.scorer` (Eq. 4),
:mod:`~salad_lite.metrics`, :mod:`~salad_lite.experiment` (the evaluation
protocol), :mod:`~salad_lite.data` (datasets and preprocessing) and
:mod:`~salad_lite.synth` (the embedded synthetic sets). DESIGN.md maps them all.
"""

from salad_lite.config import SaladConfig, paper_config, profile_config
from salad_lite.memory import MemoryBank
from salad_lite.models import ConvAutoencoder, ResNetAutoencoder, build_model
from salad_lite.scorer import SaladScorer
from salad_lite.trainer import SaladTrainer

__all__ = ["ConvAutoencoder", "MemoryBank", "ResNetAutoencoder", "SaladConfig", "SaladScorer", "SaladTrainer",
           "build_model", "paper_config", "profile_config"]
__version__ = "0.1.0"
