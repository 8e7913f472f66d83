"""facade: carve microservices out of a monolith behind a routing facade.

The mesh, the demo shop and the locustfile are ``facade.mesh``, ``facade.sample_monolith`` and
``facade.loadtests``: in the repository they keep folders of their own at the top (``facade/mesh``
and the others are symlinks to them), and pyproject's package-dir installs them under ``facade``.
"""

from .errors import ConfigError, FacadeError, Problem, ProxyError

__all__ = ["ConfigError", "FacadeError", "Problem", "ProxyError", "__version__"]

__version__ = "0.1.0"
