"""Test-suite settings shared by every test module."""

import os

import torch

# Test tensors are tiny: one intra-op thread is faster than two and is immune to a busy machine,
# where two threads that wait on each other turn milliseconds into seconds.
torch.set_num_threads(1)
# ... also for runs the tests start in this process and in subprocesses (harness.threads honours it)
os.environ.setdefault("SEGBENCH_THREADS", "1")
