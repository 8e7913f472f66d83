"""The dashboard: a page on the admin listener (``/ui``) to see and steer migrations in a browser.

No build step: HTML rendered on the server (``render``), one static script that refreshes the
sections and draws the charts as SVG, one stylesheet. The charts plot ``history``: samples of the
telemetry's rolling windows taken every few seconds.
"""

from .feature import DashboardFeature
from .history import History, Point, carve_out

__all__ = ["DashboardFeature", "History", "Point", "carve_out"]
