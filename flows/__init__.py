"""Prefect flows, the config and the CLI: the only package that wires labelers, storage and students.

`distill` runs the whole loop; `stillroom` is its command line. From Python, call
`configure_prefect()` first to get the CLI's Prefect settings (a start-up allowance for a cold
first start, a quiet terminal) without overriding any you have set::

    from stillroom.flows import configure_prefect, distill, load_config

    configure_prefect()
    report_path = distill(load_config("examples/banking77.yaml"))
"""

from typing import TYPE_CHECKING

from ._config import Config, ConfigError, load_config
from ._engine import configure as configure_prefect

if TYPE_CHECKING:
    from ._exchange import export_version, load_version
    from ._flow import distill, evaluate_run, label_dataset, train

__all__ = [
    "Config",
    "ConfigError",
    "configure_prefect",
    "distill",
    "evaluate_run",
    "export_version",
    "label_dataset",
    "load_config",
    "load_version",
    "train",
]


def __getattr__(name: str) -> object:
    # Prefect is imported only when a flow is asked for, so the CLI starts fast
    if name in ("distill", "label_dataset", "train", "evaluate_run"):
        from . import _flow

        return getattr(_flow, name)
    if name in ("load_version", "export_version"):
        from . import _exchange

        return getattr(_exchange, name)
    raise AttributeError(name)
