"""The stack's S3 store (`rclone serve s3` over a folder) and its MLflow server (basic auth,
artifacts proxied to S3)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from pipeline.core.errors import PipelineError
from pipeline.core.repo import executable
from pipeline_team.stack.config import (
    BUCKETS,
    MLFLOW_ADMIN,
    WAIT_SECONDS,
    Stack,
    write_private,
)


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a server in a session of its own (it outlives this command; its pid leads its
    group)."""
    logs = stack.dir / "logs"
    logs.mkdir(
        mode=0o700, exist_ok=True
    )  # the stack folder is 0711: only known paths are reachable
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=stack.dir,
            start_new_session=True,
        )


def _base_env() -> dict[str, str]:
    """This environment without the client-side MLflow and AWS settings a user may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RCLONE_"))}


def start_s3(stack: Stack) -> subprocess.Popen:
    root = stack.dir / "s3"
    root.mkdir(
        mode=0o700, exist_ok=True
    )  # object keys are guessable (DVC's are md5s in git): no one else reads
    for bucket in BUCKETS:  # rclone serves each top-level folder as a bucket
        (root / bucket).mkdir(exist_ok=True)
    # The key goes in the environment, not the command line, where `ps` would show it to every user;
    # rclone reads a list flag from the environment as CSV, so the pair is quoted to stay one entry.
    env = {
        **_base_env(),
        "RCLONE_AUTH_KEY": f'"{stack.config.s3_key},{stack.config.s3_secret}"',
        "RCLONE_CONFIG": str(stack.dir / "rclone.conf"),
    }
    (stack.dir / "rclone.conf").touch()
    cmd = [
        executable("rclone"),
        "serve",
        "s3",
        "--addr",
        f"127.0.0.1:{stack.config.ports['s3']}",
        str(root),
    ]
    return _spawn(stack, "s3", cmd, env)


def start_mlflow(stack: Stack) -> subprocess.Popen:
    auth_ini = stack.dir / "basic_auth.ini"
    write_private(
        auth_ini,
        (
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {stack.pg_url}/mlflow_auth\n"
            f"admin_username = {MLFLOW_ADMIN}\nadmin_password = {stack.config.mlflow_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # Checking a password hash costs most of a CPU-second on a busy 2-core machine, on every
            # request (a run makes hundreds); cached per worker for a minute. With one worker
            # nothing goes stale.
            "auth_cache_ttl_seconds = 60\n"
        ),
    )
    env = {
        **_base_env(),
        # Passwords through the environment rather than argv (visible to every user in `ps`).
        "MLFLOW_BACKEND_STORE_URI": f"{stack.pg_url}/mlflow",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": stack.config.flask_secret,
        # Only the server talks to S3: clients upload and download through its artifact proxy.
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ACCESS_KEY_ID": stack.config.s3_key,
        "AWS_SECRET_ACCESS_KEY": stack.config.s3_secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        # A dead S3 store answers a client's upload with an error in seconds, not after botocore's
        # retries.
        "AWS_RETRY_MODE": "standard",
        "AWS_MAX_ATTEMPTS": "2",
        # Without this, the server starts job-consumer processes (gigabytes) the pipeline never
        # uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        executable("mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(stack.config.ports["mlflow"]),
        "--workers",
        "1",
        "--artifacts-destination",
        "s3://mlflow/artifacts",
    ]
    return _spawn(stack, "mlflow", cmd, env)


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 2.0) -> int:
    """The HTTP status of a GET on loopback (no proxy), 0 when nothing answers."""
    import base64

    request = urllib.request.Request(url)
    if auth:
        request.add_header(
            "Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait(stack: Stack, name: str, proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """Wait until `ready()` is true; fail with the log's last line if the process dies or time runs
    out."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    log = stack.dir / "logs" / f"{name}.log"
    lines = (
        [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if log.exists()
        else []
    )
    # A Python traceback's message line says more than its last line (often a hint that follows).
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    lines = errors or lines
    state = (
        f"exited {proc.returncode}"
        if proc.poll() is not None
        else f"no answer after {WAIT_SECONDS:.0f} s"
    )
    raise PipelineError(f"{name}: {state}: {lines[-1] if lines else 'no output'} (log {log})")
