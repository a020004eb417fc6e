"""The dashboard at /ui: server-rendered pages over the store, with vendored static
assets, and the offline /docs page. See docs/dashboard.md."""

from llmsession.server.ui.assets import install_offline_docs, static_routes
from llmsession.server.ui.routes import ui_routes

__all__ = ["install_offline_docs", "static_routes", "ui_routes"]
