"""The settings tree of the running command, read from the environment once, at the edge.

Only the command-line modules (`cli`, `services_cli`, `serve_cli`, `bench_cli`) call `settings`;
everything they run is handed the sections it needs (a test keeps it so).
"""

import functools

from common.settings import Settings


@functools.cache
def settings() -> Settings:
    """This process's settings; the first call reads the environment."""
    return Settings.from_environment()
