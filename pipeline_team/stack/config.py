"""A stack folder: its generated ports and credentials (mode 0600), and the URLs and exports derived
from them."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import PipelineError

CONFIG_FILE = "stack.json"  # ports and credentials (mode 0600)
PIDS_FILE = "pids.json"  # what `start` launched: a processes.Record per component
COMPONENTS = ("postgres", "s3", "mlflow")  # start order; stop goes the other way
DATABASES = ("mlflow", "mlflow_auth", "optuna")
BUCKETS = ("mlflow", "dvc")
PG_USER = "stack"
MLFLOW_ADMIN = "admin"
WAIT_SECONDS = 120.0
DIR_ENV = "PIPELINE_STACK_DIR"  # the folder of the stack a clone uses, when not its own .stack/


@dataclass
class StackConfig:
    """Ports and credentials of one stack, generated once and reused by every later start."""

    ports: dict[str, int]
    pg_password: str
    s3_key: str
    s3_secret: str
    mlflow_password: str
    flask_secret: str  # signs the MLflow UI's CSRF tokens; stable so restarts keep sessions valid
    version: int = 1

    @classmethod
    def generate(cls) -> StackConfig:
        """Fresh random credentials and ports nothing listens on now."""
        return cls(
            ports={name: free_port() for name in COMPONENTS},
            pg_password=secrets.token_urlsafe(24),
            s3_key="stack" + secrets.token_hex(8),
            s3_secret=secrets.token_urlsafe(32),
            mlflow_password=secrets.token_urlsafe(24),  # MLflow wants at least 12 characters
            flask_secret=secrets.token_urlsafe(32),
        )


@dataclass
class Stack:
    """A stack folder: its configuration, and the URLs and exports derived from it."""

    dir: Path
    config: StackConfig
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pg_url(self) -> str:
        """SQLAlchemy URL prefix of the PostgreSQL cluster (append a database name)."""
        return f"postgresql+psycopg2://{PG_USER}:{self.config.pg_password}@127.0.0.1:{self.config.ports['postgres']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.config.ports['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.config.ports['mlflow']}"

    @property
    def optuna_storage(self) -> str:
        """The Optuna RDB storage URL (database `optuna`)."""
        return f"{self.pg_url}/optuna"

    @property
    def env(self) -> dict[str, str]:
        """What a shell that runs the pipeline needs: MLflow over HTTP with basic auth, and Optuna's
        storage.

        No S3 variables: MLflow's server proxies every artifact, and DVC reaches the store through
        the remote `stack start` (or `stack remote`) writes into the clone's `.dvc/config.local`.
        """
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.config.mlflow_password,
            "PIPELINE_SWEEP_STORAGE": self.optuna_storage,
        }


def default_dir() -> Path:
    """`.stack/` at the project root (git- and dvc-ignored)."""
    return paths.project_root() / ".stack"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(stack_dir: Path, create: bool = False) -> Stack:
    """The stack in `stack_dir`; with `create`, a new configuration is generated when there is
    none."""
    stack_dir = Path(stack_dir).resolve()
    file = stack_dir / CONFIG_FILE
    if file.exists():
        try:
            data = json.loads(file.read_text())
            return Stack(stack_dir, StackConfig(**data))
        except (ValueError, TypeError):
            raise PipelineError(
                f"{file}: not a stack configuration; remove the folder to start a new stack"
            ) from None
    if not create:
        raise PipelineError(
            f"{stack_dir}: no stack here; start one with `python -m pipeline stack start`, or name "
            "the "
            f"folder of the one that runs with --dir (or {DIR_ENV})"
        )
    stack_dir.mkdir(parents=True, exist_ok=True)
    # Others may traverse (the postgres user must reach its data folder) but not list the data or
    # logs.
    stack_dir.chmod(0o711)
    stack = Stack(stack_dir, StackConfig.generate())
    write_private(file, json.dumps(stack.config.__dict__, indent=2))
    return stack


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds credentials), created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def make_private(path: Path) -> None:
    """Make `path` readable and writable by its owner only, creating it empty when missing: for a
    file another program writes credentials into (DVC's `.dvc/config.local`)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def export_lines(stack: Stack) -> str:
    """`export NAME=value` lines for a POSIX shell (`eval "$(python -m pipeline stack env)"`)."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in stack.env.items())
