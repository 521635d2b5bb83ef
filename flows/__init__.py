"""Prefect flows, the config and the CLI: the only package that wires labelers, storage and students.

`distill` runs the whole loop; `stillroom` is its command line.
"""

from ._config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "distill", "label_dataset", "load_config"]


def __getattr__(name: str) -> object:
    # Prefect is imported only when a flow is asked for, so the CLI starts fast
    if name in ("distill", "label_dataset", "train", "evaluate_run"):
        from . import _flow

        return getattr(_flow, name)
    raise AttributeError(name)
