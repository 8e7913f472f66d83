"""Importers: another proxy's routing table as a starting ``facade.yaml`` (``facade import``).

from facade.importers import import_nginx, import_istio, emit
imported = import_nginx("nginx.conf")        # services, routes, findings (file:line:col)
text = emit(imported, header="...")           # facade.yaml text
"""

from __future__ import annotations

from .emit import Imported, check_emitted, emit, format_finding
from .istio import import_istio
from .nginx import import_nginx

__all__ = ["Imported", "check_emitted", "emit", "format_finding", "import_istio", "import_nginx"]
