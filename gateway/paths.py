"""Where the files a config names may be: inside the config file's folder or the model repository, or a folder the
operator allowed (`gateway serve --allow-path DIR`, or the GATEWAY_ALLOWED_PATHS environment variable, folders
separated by the OS path separator). The config is what is being contained, so the allowance comes from the command
line, never from the config.

Symlinks: the path and the folders are both resolved (realpath) before they are compared. A Kubernetes ConfigMap
mounts each file as a link into a `..data` folder beside it, which resolves inside the mount and passes; a link that
leads out of the allowed folders is refused as a `..` would be. The check runs when a config is parsed: a link
changed afterwards is followed where it then points.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from gateway.errors import ConfigError

ALLOWED_ENV: Final = "GATEWAY_ALLOWED_PATHS"


def allowed_folders() -> tuple[Path, ...]:
    """The folders the operator allowed beyond the config's own (the environment variable, read at each parse)."""
    raw = os.environ.get(ALLOWED_ENV, "")
    return tuple(Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip())


def allow(folders: Sequence[Path]) -> None:
    """Add `folders` to the allowance (what `--allow-path` does), for this process and the ones it starts."""
    if folders:
        current = [str(p) for p in allowed_folders()]
        os.environ[ALLOWED_ENV] = os.pathsep.join(current + [os.path.abspath(p) for p in folders])


def inside(path: Path, folders: Iterable[Path]) -> bool:
    real = os.path.realpath(path)
    for folder in folders:
        root = os.path.realpath(folder)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def check_contained(path: Path, key: str, *, config_dir: Path | None, repository: Path) -> None:
    """ConfigError naming `key` unless `path` is inside the config's folder (the working directory for a config
    parsed from bytes with no folder), the model repository or an allowed folder."""
    config_dir = config_dir if config_dir is not None else Path.cwd()
    folders = (config_dir, repository, *allowed_folders())
    if not inside(path, folders):
        raise ConfigError(
            f"{key}: {path} is outside the config's folder ({config_dir}) and the model repository ({repository});"
            f" allow its folder with --allow-path (or {ALLOWED_ENV}) if that is intended"
        )
