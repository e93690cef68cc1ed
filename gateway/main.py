"""`recsys-gateway`: load the configuration once and serve."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import version
from pathlib import Path

import uvloop

from feature_service.catalogue import CatalogueError
from gateway.config import ConfigError, Settings, load_settings
from gateway.json_logging import configure_logging
from gateway.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('recsys')}")
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("infra/config/local.yaml"),
        help="YAML configuration file (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config, os.environ)
    except ConfigError as exc:
        sys.exit(f"recsys-gateway: {exc}")
    configure_logging(settings.monitoring.log_level)
    try:
        uvloop.run(serve(settings))
    except (CatalogueError, ConfigError) as exc:
        sys.exit(f"recsys-gateway: {exc}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
