"""Student models that learn from a teacher's labels, and the metrics that say how close they get.

Students follow the scikit-learn estimator contract (fit / predict_proba / classes_) plus save/load.
"""

from students._logreg import TfidfLogReg
from students._metrics import (
    agreement,
    closeness,
    expected_calibration_error,
    kl_divergence,
    predict_ms_per_1k,
)

__all__ = [
    "TfidfLogReg",
    "agreement",
    "closeness",
    "expected_calibration_error",
    "kl_divergence",
    "predict_ms_per_1k",
]
