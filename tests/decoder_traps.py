"""A decoder that crashes, hangs or exits on demand, in real processes, for the fault tests.

`with_crashing_decoder(folder)` gives the environment of a process (and of every worker process it
starts) whose Pillow runs CRASHING_DECODER; `crashing_png(path, trap)` writes a PNG that sets it
off.
"""

from __future__ import annotations

import os
from pathlib import Path

# Imported by every Python process the test starts (PYTHONPATH): opening a PNG whose text chunk
# says "crash" kills the process with SIGSEGV, as a fault in a C image decoder does; "hang" makes
# it wait for ever, as a decoder caught in a loop. The fork server imports it too, so the workers
# it forks have Pillow already patched.
CRASHING_DECODER = """
import os, resource, signal
from PIL import PngImagePlugin

_open = PngImagePlugin.PngImageFile._open

def _crashing_open(self):
    _open(self)
    if self.info.get("trap") == "crash":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    if self.info.get("trap") == "slow":  # a large picture, say
        import time
        time.sleep(0.6)
    if self.info.get("trap") == "exit":  # a library that calls sys.exit
        raise SystemExit(3)
    if self.info.get("trap") == "killboth" and os.path.getsize(os.environ["KILLED_BOTH"]) < 2:
        # The worker and the fork server that started it killed together (an operator's kill
        # of the process group), the first two times: the worker's exit status is lost.
        with open(os.environ["KILLED_BOTH"], "a") as killed:
            killed.write("k")
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    if self.info.get("trap") == "killserver" and not os.path.exists(os.environ["KILLED_BOTH"]):
        # The fork server alone killed (an operator), once; this worker goes on.
        open(os.environ["KILLED_BOTH"], "w").close()
        os.kill(os.getppid(), signal.SIGKILL)
    if self.info.get("trap") == "stop":  # a process stopped (SIGSTOP) by someone
        os.kill(os.getpid(), signal.SIGSTOP)
    if os.environ.get("CRASH_EVERY_PNG"):  # a broken decoder
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), signal.SIGSEGV)
    if self.info.get("trap") == "hang":  # a decoder caught in a loop
        with open(os.environ["HANGING_PIDS"], "a") as pids:
            pids.write(f"{os.getpid()} ")
        while True:
            signal.pause()

PngImagePlugin.PngImageFile._open = _crashing_open

if os.environ.get("NO_THREADS_IN_WORKERS"):
    # Worker processes cannot start a thread (a container's pids.max reached).
    import multiprocessing, threading

    _start = threading.Thread.start

    def _refused_start(self):
        if multiprocessing.parent_process() is not None and self.name == "exit-with-parent":
            raise RuntimeError("can't start new thread")
        return _start(self)

    threading.Thread.start = _refused_start

if os.environ.get("FAIL_WORKER_START"):
    # The run's own process fails to start its n-th worker processes (numbers counted from 1,
    # comma-separated; "a-b" a range), as when the fork server is killed during the start.
    import multiprocessing
    from multiprocessing import popen_forkserver

    _launch, _starts, _failing = popen_forkserver.Popen._launch, [], set()
    for part in os.environ["FAIL_WORKER_START"].split(","):
        first, _, last = part.partition("-")
        _failing.update(range(int(first), int(last or first) + 1))

    def _failing_launch(self, process_obj):
        _starts.append(1)
        if len(_starts) in _failing:
            raise EOFError("unexpected EOF")
        return _launch(self, process_obj)

    if multiprocessing.parent_process() is None:
        popen_forkserver.Popen._launch = _failing_launch

if os.environ.get("NO_POOL_THREAD"):
    # The run's own process cannot start the thread of its n-th worker pool (counted from 1, as
    # FAIL_WORKER_START): a limit on processes and threads (a container's pids.max) reached.
    import multiprocessing, threading

    _thread_start, _pools = threading.Thread.start, []

    def _refused_pool_thread(self):
        # "feeder": the thread that feeds the first pool's workers, which that pool's own thread
        # starts; it dies of the error, and the files it held stay unanswered.
        refused = os.environ["NO_POOL_THREAD"].split(",")
        if type(self).__name__ == "_ExecutorManagerThread":
            _pools.append(1)
            if str(len(_pools)) in refused:
                raise RuntimeError("can't start new thread")
        elif self.name == "QueueFeederThread" and "feeder" in refused and len(_pools) == 1:
            raise RuntimeError("can't start new thread")
        return _thread_start(self)

    if multiprocessing.parent_process() is None:
        threading.Thread.start = _refused_pool_thread

if os.environ.get("SLOW_SUBMIT"):
    # The run's own process pauses that many seconds before each submission to its pool: a
    # worker's death then mostly comes while it is about to submit (a loaded machine).
    import concurrent.futures, multiprocessing, time

    _submit = concurrent.futures.ProcessPoolExecutor.submit

    def _slow_submit(self, *args, **kwargs):
        time.sleep(float(os.environ["SLOW_SUBMIT"]))
        return _submit(self, *args, **kwargs)

    if multiprocessing.parent_process() is None:
        concurrent.futures.ProcessPoolExecutor.submit = _slow_submit

if os.environ.get("FORK_SERVER_REAPED_LATE"):
    # A killed process closes its files (the fork server's socket then refuses) a moment before
    # the kernel lets its parent reap it; under load that moment grows, and multiprocessing,
    # asked meanwhile to start a worker, takes the fork server for alive. Here the run's own
    # process sees its dead fork server alive for that many seconds.
    import multiprocessing, time
    from multiprocessing import forkserver

    _waitpid, _reaped = os.waitpid, {}

    def _late_waitpid(pid, options):
        if not options & os.WNOHANG or pid != forkserver._forkserver._forkserver_pid:
            return _waitpid(pid, options)
        if pid not in _reaped:
            got = _waitpid(pid, options)
            if not got[0]:
                return got
            _reaped[pid] = (time.monotonic(), got)
        seen, got = _reaped[pid]
        late = float(os.environ["FORK_SERVER_REAPED_LATE"])
        return (0, 0) if time.monotonic() < seen + late else got

    if multiprocessing.parent_process() is None:
        os.waitpid = _late_waitpid

if os.environ.get("HALF_WRITTEN"):  # a worker killed while it sends its results, once
    import multiprocessing, struct
    from multiprocessing import connection

    _send_bytes = connection.Connection._send_bytes

    def _half_sent(self, data):
        view = memoryview(data)
        if len(view) > 2000 and multiprocessing.parent_process() is not None:
            try:
                os.close(os.open(os.environ["HALF_WRITTEN"], os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return _send_bytes(self, data)
            self._send(struct.pack("!i", len(view)) + bytes(view[: len(view) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        return _send_bytes(self, data)

    connection.Connection._send_bytes = _half_sent
"""


def crashing_png(path: Path, trap: str = "crash") -> None:
    from PIL import Image, PngImagePlugin

    text = PngImagePlugin.PngInfo()
    text.add_text("trap", trap)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path, pnginfo=text)


def with_crashing_decoder(folder: Path) -> dict[str, str]:
    """The environment for a process whose workers run CRASHING_DECODER."""
    trap = folder / "trap"
    trap.mkdir()
    (trap / "sitecustomize.py").write_text(CRASHING_DECODER)
    return {**os.environ, "HANGING_PIDS": str(folder / "hanging.pids"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(trap), os.environ.get("PYTHONPATH")]))}
