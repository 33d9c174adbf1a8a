"""cme: continual retraining of a melanoma classifier.

Importing this package has no side effects; `bootstrap()` prepares directories and stores.
"""

from cme.bootstrap import App, bootstrap
from cme.settings import Settings

__all__ = ["App", "Settings", "bootstrap"]
