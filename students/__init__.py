"""Student models that learn from a teacher's labels (or, generative, from its completions), and
the metrics that say how close they get.

Students follow the scikit-learn estimator contract (fit / predict_proba / classes_) plus save/load.
"""

from ._bert import BertStudent, kd_loss
from ._calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    temperature_scale,
)
from ._embedding import EmbeddingLogReg, SentenceEncoder
from ._generative import (
    Example,
    GenerativeStudent,
    full_kd_loss,
    keep_every_other_layer,
    sparse_kd_loss,
)
from ._logreg import TfidfLogReg, TfidfLogRegMultiLabel
from ._metrics import (
    agreement,
    closeness,
    kl_divergence,
    multilabel_closeness,
    predict_ms_per_1k,
)
from ._types import Student

# A pickle names a class by its module: name the public one, so that a saved student still loads
# after the private module it is written in is renamed or split.
for _public in (
    TfidfLogReg,
    TfidfLogRegMultiLabel,
    EmbeddingLogReg,
    SentenceEncoder,
    BertStudent,
    GenerativeStudent,
):
    _public.__module__ = __name__
del _public

__all__ = [
    "BertStudent",
    "EmbeddingLogReg",
    "Example",
    "GenerativeStudent",
    "SentenceEncoder",
    "Student",
    "TfidfLogReg",
    "TfidfLogRegMultiLabel",
    "agreement",
    "closeness",
    "expected_calibration_error",
    "fit_temperature",
    "full_kd_loss",
    "kd_loss",
    "keep_every_other_layer",
    "kl_divergence",
    "multilabel_closeness",
    "predict_ms_per_1k",
    "reliability_bins",
    "sparse_kd_loss",
    "temperature_scale",
]
