"""`python -m pipeline stack start|stop|status|env`: a team tracking stack on 127.0.0.1, one command.

Three existing engines, each a process of its own: PostgreSQL 15 (databases `mlflow`, `mlflow_auth`
and `optuna`), an S3 store (`rclone serve s3` over a folder; buckets `mlflow` and `dvc`) and
`mlflow server` with its backend in PostgreSQL, artifacts proxied to `s3://mlflow/artifacts` (clients
never need S3 credentials for MLflow) and basic authentication. Ports and credentials are generated on
the first start and saved (mode 0600) in the stack folder, so a restart reuses them and runs survive.

The process logic is in plain functions (`start`, `stop`, `status`, `exports`) that the tests call;
the Click commands at the end only print.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from pipeline.core import paths
from pipeline.core.errors import PipelineError, first_line

CONFIG_FILE = "stack.json"  # ports and credentials (mode 0600)
PIDS_FILE = "pids.json"  # what `start` launched: pid and kernel start time per component
COMPONENTS = ("postgres", "s3", "mlflow")  # start order; stop goes the other way
DATABASES = ("mlflow", "mlflow_auth", "optuna")
BUCKETS = ("mlflow", "dvc")
PG_USER = "stack"
MLFLOW_ADMIN = "admin"
PG_BIN_DEFAULT = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15 package
WAIT_SECONDS = 120.0


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
        """Everything a client needs: MLflow over HTTP with basic auth, S3 for DVC, Optuna's storage.

        AWS_ENDPOINT_URL_S3 is read by botocore itself (and so by DVC's s3 remote and boto3), which
        keeps the per-stack port out of `.dvc/config`.
        """
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.config.mlflow_password,
            "AWS_ACCESS_KEY_ID": self.config.s3_key,
            "AWS_SECRET_ACCESS_KEY": self.config.s3_secret,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",  # rclone ignores it, botocore wants one to sign requests
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
    """The stack in `stack_dir`; with `create`, a new configuration is generated when there is none."""
    stack_dir = Path(stack_dir).resolve()
    file = stack_dir / CONFIG_FILE
    if file.exists():
        try:
            data = json.loads(file.read_text())
            return Stack(stack_dir, StackConfig(**data))
        except (ValueError, TypeError):
            raise PipelineError(f"{file}: not a stack configuration; remove the folder to start a new stack") from None
    if not create:
        raise PipelineError(f"{stack_dir}: no stack here; start one with `python -m pipeline stack start`")
    stack_dir.mkdir(parents=True, exist_ok=True)
    # Others may traverse (the postgres user must reach its data folder) but not list the data or logs.
    stack_dir.chmod(0o711)
    stack = Stack(stack_dir, StackConfig.generate())
    _write_private(file, json.dumps(stack.config.__dict__, indent=2))
    return stack


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds credentials), created so from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


# --- processes: identify by pid plus the kernel's start time, so a reused pid is never mistaken for ours


def _start_ticks(pid: int) -> int | None:
    """The kernel start time of process `pid` (field 22 of /proc/PID/stat), None if it does not exist
    or has exited (a zombie: a process that started it in-process, like a test, has not reaped it yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def is_running(record: dict[str, int]) -> bool:
    """Whether the process of a pid record ({"pid", "ticks"}) is still the one that was started."""
    return _start_ticks(record["pid"]) == record["ticks"]


def _read_pids(stack: Stack) -> dict[str, dict[str, int]]:
    try:
        return json.loads((stack.dir / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_pids(stack: Stack, pids: dict[str, dict[str, int]]) -> None:
    _write_private(stack.dir / PIDS_FILE, json.dumps(pids, indent=2))


def _record(pid: int) -> dict[str, int]:
    ticks = _start_ticks(pid)
    if ticks is None:
        raise PipelineError(f"process {pid} exited right after starting")
    return {"pid": pid, "ticks": ticks}


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants, in MiB (shared pages counted in each process)."""
    total = 0
    for p in _descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- PostgreSQL


def pg_bin() -> Path:
    """The folder of PostgreSQL 15's server binaries (PIPELINE_PG_BIN overrides Debian's path)."""
    candidates = [Path(os.environ["PIPELINE_PG_BIN"])] if os.environ.get("PIPELINE_PG_BIN") else [PG_BIN_DEFAULT]
    if not os.environ.get("PIPELINE_PG_BIN") and shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)  # type: ignore[arg-type]
    for folder in candidates:
        if (folder / "pg_ctl").is_file() and (folder / "initdb").is_file():
            return folder
    raise PipelineError(
        f"PostgreSQL server binaries not found in {candidates[0]}: apt-get install postgresql "
        "(or set PIPELINE_PG_BIN to the folder holding pg_ctl and initdb)"
    )


def _as_postgres() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its binaries as the `postgres` system user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PipelineError("as root, PostgreSQL must run as the `postgres` system user, which does not exist: "
                            "apt-get install postgresql creates it") from None
    return ["runuser", "-u", "postgres", "--"]


def _pg_dirs(stack: Stack) -> tuple[Path, Path, Path]:
    home = stack.dir / "postgres"
    return home, home / "data", home / "postgres.log"


def _pg_run(stack: Stack, *args: str) -> None:
    """Run a PostgreSQL binary (as the postgres user when root); its output's last line on failure."""
    proc = subprocess.run([*_as_postgres(), str(pg_bin() / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=180, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "failed").splitlines()
        _, _, log = _pg_dirs(stack)
        raise PipelineError(f"postgres: {args[0]} {args[1]}: {lines[-1]} (log {log})")


def _init_postgres(stack: Stack) -> None:
    """initdb on the first start: password authentication, TCP on 127.0.0.1 only, no Unix socket."""
    home, data, _ = _pg_dirs(stack)
    if (data / "PG_VERSION").exists():
        return
    home.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        _check_reachable_by_postgres(home)
    pwfile = home / "pwfile"
    _write_private(pwfile, stack.config.pg_password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        _pg_run(stack, "initdb", "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--locale=C")
    finally:
        pwfile.unlink(missing_ok=True)
    with open(data / "postgresql.conf", "a") as fh:
        # A socket in /var/run/postgresql would need that folder; TCP on loopback is all the stack uses.
        fh.write(f"\n# python -m pipeline stack\nlisten_addresses = '127.0.0.1'\nport = {stack.config.ports['postgres']}\n"
                 "unix_socket_directories = ''\nmax_connections = 50\n")


def _check_reachable_by_postgres(folder: Path) -> None:
    """The postgres user must be able to traverse every parent folder (a tmp folder may be 0700)."""
    for parent in folder.parents:
        if not os.stat(parent).st_mode & 0o001:
            raise PipelineError(f"{parent}: the postgres user cannot enter this folder (mode "
                                f"{oct(os.stat(parent).st_mode & 0o777)}); use a --dir below folders others can traverse")


def _create_databases(stack: Stack) -> None:
    """The databases of the stack, created once (CREATE DATABASE cannot run inside a transaction)."""
    import psycopg2

    try:
        conn = psycopg2.connect(host="127.0.0.1", port=stack.config.ports["postgres"], user=PG_USER,
                                password=stack.config.pg_password, dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database")
                existing = {row[0] for row in cur.fetchall()}
                for name in DATABASES:
                    if name not in existing:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
    except psycopg2.Error as exc:
        _, _, log = _pg_dirs(stack)
        raise PipelineError(f"postgres: creating the databases: {first_line(exc)} (log {log})") from None


def _start_postgres(stack: Stack) -> dict[str, int]:
    """pg_ctl start; the postmaster's pid record. Databases are created by the caller, once the pid is
    written down: whatever fails after this point, `stop` can still find the server."""
    _init_postgres(stack)
    _, data, log = _pg_dirs(stack)
    try:
        _pg_run(stack, "pg_ctl", "start", "-D", str(data), "-l", str(log), "-w", "-t", str(int(WAIT_SECONDS)))
    except BaseException:  # a timeout may leave the server coming up, with no pid recorded yet
        subprocess.run([*_as_postgres(), str(pg_bin() / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"],
                       capture_output=True, timeout=60, check=False)
        raise
    return _record(int((data / "postmaster.pid").read_text().splitlines()[0]))


# --- S3 (rclone) and MLflow


def _tool(name: str) -> str:
    """An executable installed beside this interpreter (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if not found:
        raise PipelineError(f"{name} not found beside {sys.executable} nor on PATH: pip install -r requirements.txt")
    return found


def _spawn(stack: Stack, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a server in a session of its own (it outlives this command; its pid leads its group)."""
    logs = stack.dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)  # the stack folder is 0711: only known paths are reachable
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=stack.dir, start_new_session=True)


def _base_env() -> dict[str, str]:
    """This environment without the client-side MLflow and AWS settings a user may have exported."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "RCLONE_"))}


def _start_s3(stack: Stack) -> subprocess.Popen:
    root = stack.dir / "s3"
    root.mkdir(mode=0o700, exist_ok=True)  # object keys are guessable (DVC's are md5s in git): no one else reads
    for bucket in BUCKETS:  # rclone serves each top-level folder as a bucket
        (root / bucket).mkdir(exist_ok=True)
    # The key goes in the environment, not the command line, where `ps` would show it to every user;
    # rclone reads a list flag from the environment as CSV, so the pair is quoted to stay one entry.
    env = {**_base_env(),
           "RCLONE_AUTH_KEY": f'"{stack.config.s3_key},{stack.config.s3_secret}"',
           "RCLONE_CONFIG": str(stack.dir / "rclone.conf")}
    (stack.dir / "rclone.conf").touch()
    cmd = [_tool("rclone"), "serve", "s3", "--addr", f"127.0.0.1:{stack.config.ports['s3']}", str(root)]
    return _spawn(stack, "s3", cmd, env)


def _start_mlflow(stack: Stack) -> subprocess.Popen:
    auth_ini = stack.dir / "basic_auth.ini"
    _write_private(auth_ini, (
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {stack.pg_url}/mlflow_auth\n"
        f"admin_username = {MLFLOW_ADMIN}\nadmin_password = {stack.config.mlflow_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Checking a password hash costs ~0.7 s of CPU on a busy 2-core machine, on every request (a run
        # makes hundreds); cached per worker for a minute. With one worker nothing goes stale.
        "auth_cache_ttl_seconds = 60\n"
    ))
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
        # Without this, the server starts ~7 job-consumer processes (~2.4 GB) the pipeline never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [_tool("mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
           "--port", str(stack.config.ports["mlflow"]), "--workers", "1",
           "--artifacts-destination", "s3://mlflow/artifacts"]
    return _spawn(stack, "mlflow", cmd, env)


def _http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 2.0) -> int:
    """The HTTP status of a GET on loopback (no proxy), 0 when nothing answers."""
    import base64

    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait(stack: Stack, name: str, proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """Wait until `ready()` is true; fail with the log's last line if the process dies or time runs out."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    log = stack.dir / "logs" / f"{name}.log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    # A Python traceback's message line says more than its last line (often a hint that follows).
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    lines = errors or lines
    state = f"exited {proc.returncode}" if proc.poll() is not None else f"no answer after {WAIT_SECONDS:.0f} s"
    raise PipelineError(f"{name}: {state}: {lines[-1] if lines else 'no output'} (log {log})")


# --- the commands' logic


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(stack_dir: Path) -> Stack:
    """Start PostgreSQL, the S3 store and the MLflow server of the stack in `stack_dir` (created on the
    first start), wait until each answers, record their pids. Whatever it started is stopped again if a
    later piece fails. Returns the stack with `timings` (seconds per piece and in total)."""
    began = time.monotonic()
    pg_bin()  # before creating anything: a machine without PostgreSQL fails in one line
    _as_postgres()
    stack = load(stack_dir, create=True)
    old = _read_pids(stack)
    if old:
        stale = [f"{name} (pid {rec['pid']})" for name, rec in old.items() if not is_running(rec)]
        if stale:
            raise PipelineError(f"{stack.dir / PIDS_FILE}: stale pid for {', '.join(stale)}, not running; "
                                "run `python -m pipeline stack stop` first")
        raise PipelineError(f"the stack in {stack.dir} is already running; `python -m pipeline stack env` prints its exports")
    for name in COMPONENTS:
        port = stack.config.ports[name]
        if _port_busy(port):
            # The ports are kept for good (they are in everyone's exports and in postgresql.conf).
            raise PipelineError(f"port {port} on 127.0.0.1 (for {name}) is in use by another program; stop that "
                                "program, or start a new stack in another --dir")
    pids: dict[str, dict[str, int]] = {}
    try:
        t = time.monotonic()
        pids["postgres"] = _start_postgres(stack)
        _write_pids(stack, pids)
        _create_databases(stack)
        stack.timings["postgres"] = time.monotonic() - t

        t = time.monotonic()
        s3 = _start_s3(stack)
        pids["s3"] = _record(s3.pid)
        _write_pids(stack, pids)
        _wait(stack, "s3", s3, lambda: _http_status(stack.s3_endpoint) != 0)
        stack.timings["s3"] = time.monotonic() - t

        t = time.monotonic()
        server = _start_mlflow(stack)
        pids["mlflow"] = _record(server.pid)
        _write_pids(stack, pids)
        auth = (MLFLOW_ADMIN, stack.config.mlflow_password)
        api = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        _wait(stack, "mlflow", server, lambda: _http_status(api, auth) == 200)
        stack.timings["mlflow"] = time.monotonic() - t
    except BaseException:
        stop(stack.dir)
        raise
    stack.timings["total"] = time.monotonic() - began
    return stack


def _stop_one(stack: Stack, name: str, record: dict[str, int]) -> None:
    if name == "postgres":
        _, data, _ = _pg_dirs(stack)
        _pg_run(stack, "pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w")
        return
    # The pid leads the process group it was started in (start_new_session): mlflow's uvicorn worker
    # is in it too, and goes with it.
    os.killpg(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and is_running(record):
        time.sleep(0.2)
    if is_running(record):
        os.killpg(record["pid"], signal.SIGKILL)


def stop(stack_dir: Path) -> list[str]:
    """Stop the processes `start` recorded in `stack_dir`, by pid, newest first; forget the records.
    Returns one line per piece (a stale record, whose process is gone, is only removed)."""
    stack = load(stack_dir)
    pids = _read_pids(stack)
    lines = []
    for name in reversed(COMPONENTS):
        record = pids.get(name)
        if record is None:
            continue
        if is_running(record):
            _stop_one(stack, name, record)
            lines.append(f"{name}: stopped (pid {record['pid']})")
        else:
            lines.append(f"{name}: pid {record['pid']} was not running (stale record removed)")
        del pids[name]
        _write_pids(stack, pids)
    (stack.dir / PIDS_FILE).unlink(missing_ok=True)
    return lines or ["not running"]


@dataclass(frozen=True)
class ComponentStatus:
    """One piece of the stack as `status` sees it."""

    name: str
    pid: int | None
    running: bool
    port: int
    rss_mib: float


def status(stack_dir: Path) -> list[ComponentStatus]:
    """Each piece: recorded pid, whether that process still runs, its port, RSS of its process tree."""
    stack = load(stack_dir)
    pids = _read_pids(stack)
    out = []
    for name in COMPONENTS:
        record = pids.get(name)
        running = bool(record) and is_running(record)  # type: ignore[arg-type]
        out.append(ComponentStatus(name, record["pid"] if record else None, running, stack.config.ports[name],
                                   _rss_mib(record["pid"]) if running else 0.0))  # type: ignore[index]
    return out


def export_lines(stack: Stack) -> str:
    """`export NAME=value` lines for a POSIX shell (`eval "$(python -m pipeline stack env)"`)."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in stack.env.items())
