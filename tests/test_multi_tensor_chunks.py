"""The CUDA multi-tensor apply's chunk walk, run on the host: csrc/common/cuda/multi_tensor_chunks.h (the launch
tables and each thread's elements, as the kernels use them) compiled into tests/multi_tensor_chunks_probe.cpp,
over random lists of tensor sizes. Every element is covered exactly once, within the tables' limits, and an
aligned chunk leaves only its last (length % 4) elements to the scalar path."""

import pathlib
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHUNK, ILP, MAX_BLOCKS = 65536, 4, 320
# table entries per launch for each operand count: what fits the kernel's 4 KiB of arguments
MAX_TENSORS = {1: 64, 4: 36, 5: 30, 6: 28}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("needs a C++ compiler for the host probe")
    if not (ROOT / "csrc").is_dir():
        pytest.skip("needs the source tree's csrc/ (these tests run apart from it, against an installed wheel)")
    exe = tmp_path_factory.mktemp("chunks") / "probe"
    subprocess.run([compiler, "-std=c++17", "-O2", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests" / "multi_tensor_chunks_probe.cpp"), "-o", str(exe)], check=True)
    return exe


def walk(probe, depth, tensors):
    """Runs the probe; returns (launches, max blocks, max entries, problems, [(not once, vector, scalar)])."""
    text = f"{depth} {len(tensors)}\n" + "".join(f"{n} {int(a)}\n" for n, a in tensors)
    lines = subprocess.run([str(probe)], input=text, capture_output=True, text=True, check=True).stdout.splitlines()
    problems = [line for line in lines if line.startswith("problem")]
    head = next(line for line in lines if line.startswith("launches")).split()
    counts = [tuple(int(v) for v in line.split()) for line in lines if line[0].isdigit()]
    return int(head[1]), int(head[3]), int(head[5]), problems, counts


def expected_split(numel, aligned):
    """(vector, scalar) element counts: an aligned chunk sends all but its last length % 4 elements to vectors."""
    if not aligned:
        return 0, numel
    tails = sum(min(CHUNK, numel - begin) % ILP for begin in range(0, numel, CHUNK))
    return numel - tails, tails


SIZES = st.one_of(st.integers(0, 70_000),
                  st.sampled_from([0, 1, 3, 4, 5, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 5 * CHUNK + 3]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.sampled_from(sorted(MAX_TENSORS)), tensors=st.lists(st.tuples(SIZES, st.booleans()), max_size=90))
@example(depth=4, tensors=[(3, True), (321 * CHUNK + 5, True), (7, False)])  # a tensor continuing in a new launch
@example(depth=6, tensors=[(5 * CHUNK + 3, True)] * 70)  # launches full of blocks, and of entries
def test_chunk_walk_covers_each_element_once(probe, depth, tensors):
    launches, max_blocks, max_entries, problems, counts = walk(probe, depth, tensors)
    assert problems == []
    assert max_blocks <= MAX_BLOCKS and max_entries <= MAX_TENSORS[depth]
    chunks = sum(-(-n // CHUNK) for n, _ in tensors)
    nonempty = sum(n > 0 for n, _ in tensors)
    assert launches >= max(-(-chunks // MAX_BLOCKS), -(-nonempty // MAX_TENSORS[depth]))
    for (numel, aligned), (not_once, vector, scalar) in zip(tensors, counts):
        assert not_once == 0, (numel, aligned)
        assert (vector, scalar) == expected_split(numel, aligned), (numel, aligned)
