"""Test session settings.

One torch thread per process: the suite starts engine subprocesses beside the test process, and on small
machines several processes with several OpenMP threads each run many times slower than one thread each.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
