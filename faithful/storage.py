"""Where things live on disk, and how they are written so that nothing is ever half-written.

Directories (all overridable by environment variables):

* ``FAITHFUL_HOME``  – project root holding ``data/``, ``runs/``, ``results/``. Default: the
  nearest folder above the working directory with this project's ``pyproject.toml``
  (so notebooks run from ``notebooks/`` write to the repository's folders), else the cwd.
* ``FAITHFUL_MODELS_DIR`` – converted model weights. Default: ``<home>/data/models``; the
  tests point ``FAITHFUL_HOME`` at a scratch folder and this at the repository's cache.
* ``FAITHFUL_DATA_DIR`` – folder of public text samples (``NAME.jsonl.gz``). Default:
  ``<home>/../shared/data`` when it exists.

Writes are atomic: a file is written to a temporary sibling and renamed into place; a
folder is filled under a temporary name and renamed when complete. A crash, Ctrl-C or a
full disk leaves either the old artifact or none, never a torn one; what a SIGKILL leaves
beside it (a temporary sibling) is tidied by :func:`recover` before the artifact is written again.
:func:`deferred_interrupt` lets a long job finish its step and save before a Ctrl-C stops it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt


def home() -> Path:
    env = os.environ.get("FAITHFUL_HOME")
    if env:
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        pp = d / "pyproject.toml"
        if pp.is_file() and 'name = "faithful"' in pp.read_text(errors="ignore"):
            return d
    return cwd


def data_dir() -> Path:
    """Generated datasets and converted model weights."""
    return home() / "data"


def models_dir() -> Path:
    """Converted model weights (``FAITHFUL_MODELS_DIR``, default ``data/models``)."""
    env = os.environ.get("FAITHFUL_MODELS_DIR")
    return Path(env).expanduser().resolve() if env else data_dir() / "models"


def runs_dir() -> Path:
    """SAE checkpoints, one folder per (model, dataset, hook, seed)."""
    return home() / "runs"


def results_dir() -> Path:
    """Metric JSON files and their PNG figures."""
    return home() / "results"


def shared_data_dir() -> Path | None:
    """The folder of public text samples, or None when there is none."""
    env = os.environ.get("FAITHFUL_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    default = home().parent / "shared" / "data"
    return default if default.is_dir() else None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temporary sibling + rename)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: a temporary sibling, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it is renamed to ``path``.

    On any exception the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(path: str | os.PathLike) -> None:
    """Tidy what a killed process (SIGKILL, power loss: no handler ran) left beside ``path``:
    the temporary siblings of :func:`atomic_dir` / :func:`write_json`, and, when it was killed
    between :func:`atomic_dir`'s two renames, the previous version, which is put back."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    shutil.rmtree(old, ignore_errors=True)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


class _Interrupt:
    requested = False


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[_Interrupt]:
    """Ctrl-C (SIGINT, also Jupyter's interrupt) sets ``.requested`` instead of raising, so a long
    job can save its state at a safe point and then raise ``KeyboardInterrupt`` itself. A second
    Ctrl-C raises at once. Off the main thread (where Python delivers no signal), or where SIGINT is
    ignored or handled outside Python, it changes nothing."""
    flag = _Interrupt()
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if previous in (None, signal.SIG_IGN):  # off the main thread, ignored (`cmd &`), or set from C: leave it
        yield flag
        return

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def slug(name: str) -> str:
    """A file or folder name without spaces or punctuation: ``faithful (bos, T=1)`` → ``faithful-bos-t-1``."""
    return re.sub(r"[^a-z0-9._]+", "-", str(name).lower()).strip("-.") or "result"


def result_dir(model: str, metric: str) -> Path:
    """``results/<model>/<metric>/``: where the notebooks and the CLI save one metric's results."""
    return results_dir() / slug(model) / slug(metric)


class Result:
    """The protocol every result follows (dataclasses with a ``name`` field):

    * ``to_dict()`` – the JSON-ready content (default: every field);
    * ``figure(**kwargs)`` – a matplotlib figure of it;
    * ``save(directory, **kwargs)`` – ``<slug(name)>.json`` and ``<slug(name)>.png`` (the figure,
      drawn with ``kwargs``) in ``directory``, written atomically; returns the JSON's path.
    """

    name: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def figure(self, **kwargs):
        raise NotImplementedError

    def save(self, directory: str | os.PathLike, **figure_kwargs) -> Path:
        directory, stem = Path(directory), slug(self.name)
        path = write_json(directory / f"{stem}.json", self.to_dict())
        fig = self.figure(**figure_kwargs)
        save_figure(fig, directory / f"{stem}.png")
        plt.close(fig)
        return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)
    return path
