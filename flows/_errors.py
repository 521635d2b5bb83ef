"""The error every flow stage raises when a run cannot go on for a reason the user can fix."""

from __future__ import annotations


class SetupError(Exception):
    """The run cannot start: a missing API key, an unusable teacher, too little data."""
