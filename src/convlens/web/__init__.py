"""The web explainer: a FastAPI app with the JSON API and the static front end."""

from convlens.web.server import DEFAULT_HOST, DEFAULT_PORT, create_app, serve
from convlens.web.state import ServerConfig

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServerConfig", "create_app", "serve"]
