"""facade: carve microservices out of a monolith behind a routing facade."""

from .errors import ConfigError, FacadeError, Problem, ProxyError

__all__ = ["ConfigError", "FacadeError", "Problem", "ProxyError", "__version__"]

__version__ = "0.1.0"
