"""The HTTP scoring service (``clvtier serve``; needs the ``serve`` extra).

>>> from clvtier.serve import Settings, create_app  # doctest: +SKIP
>>> app = create_app(Settings(model_dir="runs/1"))  # doctest: +SKIP
"""

from clvtier.serve.app import create_app, run
from clvtier.serve.settings import Settings, get_settings

__all__ = ["Settings", "create_app", "get_settings", "run"]
