"""Run a function in a forked child with a timeout, so that a crash or a hang is one case's outcome, not the end of
the run: the runner of the adversarial probes (scripts/probe_step/harness.py, scripts/probe_erd/probe.py)."""

import json
import os
import select
import signal
import time


def run_forked(fn, timeout: float) -> dict:
    """fn() (returning a JSON-serialisable dict) in a child process with one torch thread. Returns that dict;
    {'status': 'HARNESS_ERROR', 'msg': ...} where fn raised; {'status': 'HANG', ...} after `timeout` seconds (the
    child is killed); {'status': 'CRASH', 'msg': ...} where the child died without an answer (a segfault, say)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            import torch
            torch.set_num_threads(1)
            result = fn()
        except BaseException as e:  # noqa: BLE001  (the child reports whatever happened)
            result = {'status': 'HARNESS_ERROR', 'msg': repr(e)[:300]}
        os.write(w, json.dumps(result, default=str).encode())
        os.close(w)
        os._exit(0)
    os.close(w)
    buf, start = b'', time.time()
    while True:
        left = timeout - (time.time() - start)
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return {'status': 'HANG', 'msg': f'> {timeout} s'}
        readable, _, _ = select.select([r], [], [], left)
        if readable:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            buf += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if buf:
        return json.loads(buf)
    signal_number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return {'status': 'CRASH', 'msg': f'wait status {status} (signal {signal_number})'}
