"""A Spark standalone cluster on the loopback interface: one master and its workers, each a
JVM started with the ``spark-class`` launcher that ships in the ``pyspark`` wheel.

The scale-out engine (:class:`~provguard.adapters.spark_engine.SparkEngine`) runs the same
rewritten Spark SQL on ``local[2]`` or on a cluster URL. :class:`StandaloneCluster` gives a real
``spark://127.0.0.1:<port>`` URL on one machine, so the cluster path (driver, master, executors
in separate JVMs talking over RPC) is exercised by tests, benchmarks and anyone trying cluster
mode before pointing ``provguard query --spark-master`` at a production cluster.

Every socket is bound to 127.0.0.1 (``SPARK_LOCAL_IP``, ``--host``), the web UIs take an
ephemeral port, the REST submission server is off, and the workers' scratch folders live in a
temporary directory removed on :meth:`StandaloneCluster.stop`. Follows the Spark standalone
mode documentation (https://spark.apache.org/docs/latest/spark-standalone.html).

Raises :class:`~provguard.errors.StoreError` when a JVM cannot start or a worker does not
register in time.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from provguard.errors import StoreError

LOOPBACK = "127.0.0.1"
#: what a worker's log says once the master accepted it
_REGISTERED = "Successfully registered with master"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def spark_home() -> Path:
    """The Spark distribution inside the installed ``pyspark`` package (it holds
    ``bin/spark-class`` and the jars). Raises :class:`StoreError` without pyspark."""
    try:
        import pyspark
    except ImportError as exc:
        raise StoreError("a Spark standalone cluster needs pyspark") from exc
    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists():
        raise StoreError(f"pyspark at {home} has no bin/spark-class")
    return home


class StandaloneCluster:
    """A loopback Spark standalone cluster: ``workers`` workers of ``cores`` cores and
    ``memory`` (a JVM size such as ``"1g"``) each. Use as a context manager, or call
    :meth:`start` / :meth:`stop`; :attr:`url` is the master URL (``spark://127.0.0.1:port``).

    ``timeout``: seconds to wait for the master and every worker (JVM start-up takes 5-15 s
    on two cores). Logs go to ``<scratch>/master.log`` and ``worker-<i>.log``."""

    def __init__(
        self, *, workers: int = 1, cores: int = 1, memory: str = "1g", timeout: float = 90.0
    ) -> None:
        if workers < 1 or cores < 1:
            raise StoreError(f"a cluster needs >= 1 worker and core, got {workers}, {cores}")
        self.workers = workers
        self.cores = cores
        self.memory = memory
        self.timeout = timeout
        self.port = 0
        self.scratch: Path | None = None
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The master URL to pass as ``SparkEngine(master=...)`` or ``--spark-master``."""
        if not self.port:
            raise StoreError("the cluster is not started")
        return f"spark://{LOOPBACK}:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(spark_home())
        env["SPARK_LOCAL_IP"] = LOOPBACK
        env.setdefault("PYSPARK_PYTHON", shutil.which("python3") or "python3")
        # no REST submission server (it would take a fixed port) and no daemon log rolling
        env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"
        return env

    def _spawn(self, log: Path, *args: str) -> subprocess.Popen[bytes]:
        launcher = spark_home() / "bin" / "spark-class"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(launcher), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.scratch,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def _wait_for(self, log: Path, text: str, proc: subprocess.Popen[bytes], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if log.exists() and text in log.read_text(errors="replace"):
                return
            if proc.poll() is not None:
                raise StoreError(f"the Spark {what} exited ({proc.returncode}); see {log}")
            time.sleep(0.25)
        raise StoreError(f"the Spark {what} did not start in {self.timeout:.0f} s; see {log}")

    def start(self) -> StandaloneCluster:
        """Start the master, then the workers, and wait until every worker is registered."""
        self.scratch = Path(tempfile.mkdtemp(prefix="provguard-spark-"))
        self.port = _free_port()
        try:
            master_log = self.scratch / "master.log"
            master = self._spawn(
                master_log,
                "org.apache.spark.deploy.master.Master",
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                "--webui-port",
                "0",
            )
            self._wait_for(master_log, "I have been elected leader", master, "master")
            for i in range(self.workers):
                log = self.scratch / f"worker-{i}.log"
                work = self.scratch / f"work-{i}"
                work.mkdir()
                worker = self._spawn(
                    log,
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    LOOPBACK,
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--webui-port",
                    "0",
                    "--work-dir",
                    str(work),
                    self.url,
                )
                self._wait_for(log, _REGISTERED, worker, f"worker {i}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every JVM (SIGTERM, then SIGKILL after 10 s) and remove the scratch folder."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        self.port = 0

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
