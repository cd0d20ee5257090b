"""``tldr_jax.parallel``: data-parallel apply over a device mesh.

The multi-device checks run in a subprocess with 4 host CPU devices (``XLA_FLAGS`` must be set before
JAX starts, and the other test files import JAX in this process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldr_jax import parallel

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)

SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import jax, jax.numpy as jnp, numpy as np
    import tldr_jax
    from tldr_jax import parallel

    assert jax.device_count() == 4, jax.devices()
    params = tldr_jax.init(0, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(1), (8, 4, 32, 32, 3))
    opts = dict(source="origin", return_saliency=True)
    mesh = parallel.make_mesh()
    report = {"mesh": dict(mesh.shape)}
    for n in (8, 5):
        ref = tldr_jax.apply(params, video[:n], 3, **opts)
        out = parallel.sharded_apply(params, video[:n], 3, mesh=mesh, **opts)
        leaves = zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(out))
        report[n] = {
            "shapes_equal": [a.shape for a in jax.tree_util.tree_leaves(ref)]
            == [b.shape for b in jax.tree_util.tree_leaves(out)],
            "max_diff": max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
                            for a, b in leaves),
            "owner_equal": bool((ref.source.owner == out.source.owner).all()),
            "schedule_equal": ref.schedule == out.schedule,
            "devices": len(out.tokens.sharding.device_set),
            "spec_is_data": getattr(out.tokens.sharding, "spec", None) == jax.sharding.PartitionSpec("data"),
        }
    mesh1 = parallel.make_mesh(jax.devices()[:1])
    one = parallel.sharded_apply(params, np.asarray(video[:5]), [3, 3], mesh=mesh1, **opts)
    report["one_device_schedule_equal"] = one.schedule == ref.schedule
    report["one_device_diff"] = float(jnp.max(jnp.abs(one.pooled - ref.pooled)))
    report["one_device_count"] = len(one.pooled.sharding.device_set)
    placed = parallel.shard_batch(np.zeros((4, 2)), mesh)
    report["shard_devices"] = sorted(s.device.id for s in placed.addressable_shards)
    report["shard_rows"] = [s.data.shape[0] for s in placed.addressable_shards]
    report["replicated"] = all(
        len(x.sharding.device_set) == 4 and x.sharding.is_fully_replicated
        for x in jax.tree_util.tree_leaves(parallel.replicate(params, mesh).tree)
    )
    try:
        parallel.shard_batch(np.zeros((3, 2)), mesh)
        report["uneven_error"] = None
    except ValueError as err:
        report["uneven_error"] = str(err)
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def four_devices() -> dict:
    """Run :data:`SCRIPT` with 4 forced host devices and return its report."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    code = f"TINY = {TINY!r}\n" + SCRIPT
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def test_sharded_equals_single_device(four_devices):
    assert four_devices["mesh"] == {"data": 4}
    for n in ("8", "5"):
        r = four_devices[n]
        assert r["shapes_equal"] and r["schedule_equal"] and r["owner_equal"], r
        assert r["max_diff"] < 1e-5, r


def test_output_is_sharded_over_the_devices(four_devices):
    full = four_devices["8"]
    assert full["devices"] == 4 and full["spec_is_data"]
    assert four_devices["shard_devices"] == [0, 1, 2, 3] and four_devices["shard_rows"] == [1, 1, 1, 1]
    assert four_devices["replicated"]


def test_uneven_batch_is_padded_and_trimmed(four_devices):
    assert four_devices["5"]["shapes_equal"]  # 5 clips on 4 devices: padded to 8, trimmed to 5
    assert "pad_batch" in four_devices["uneven_error"]


def test_pad_batch_and_sizes():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert [parallel.padded_size(n, 4) for n in (0, 1, 4, 5, 8)] == [4, 4, 4, 8, 8]
    y = parallel.pad_batch(x, 4)
    assert isinstance(y, np.ndarray) and y.shape == (4, 2) and (y[3] == x[2]).all()
    z = parallel.pad_batch(jnp.asarray(x), 5)
    assert isinstance(z, jax.Array) and z.shape == (5, 2) and (np.asarray(z[4]) == x[2]).all()
    assert parallel.pad_batch(x, 3) is x
    with pytest.raises(ValueError):
        parallel.pad_batch(x, 2)


def test_single_device_mesh(four_devices):
    """A 1-device mesh (NumPy input, schedule as a list) gives the unsharded result."""
    assert four_devices["one_device_count"] == 1 and four_devices["one_device_schedule_equal"]
    assert four_devices["one_device_diff"] < 1e-5


def test_bad_arguments():
    params = None  # the options and the video are checked before the weights are touched
    video = np.zeros((2, 4, 32, 32, 3), np.float32)
    with pytest.raises(TypeError, match="unknown option"):
        parallel.sharded_apply(params, video, 2, bogus=True)
    with pytest.raises(ValueError, match="B, T, H, W"):
        parallel.sharded_apply(params, video[0], 2)


MULTIHOST_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    pid, port = int(sys.argv[1]), sys.argv[2]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
    import numpy as np, jax.numpy as jnp
    import tldr_jax
    from tldr_jax import parallel

    params = tldr_jax.init(0, "umt_b16", **TINY)
    full = np.asarray(jax.random.normal(jax.random.key(1), (5, 4, 32, 32, 3)))
    mine = full[:3] if pid == 0 else full[3:]  # uneven: 3 and 2 clips
    out = parallel.sharded_apply(params, mine, 3, mesh=parallel.make_mesh())
    ref = tldr_jax.apply(params, jnp.asarray(mine), 3)
    print("REPORT" + json.dumps({
        "processes": jax.process_count(), "devices": jax.device_count(), "rows": out.pooled.shape[0],
        "max_diff": float(np.abs(np.asarray(out.pooled) - np.asarray(ref.pooled)).max()),
    }))
    """
)


@pytest.mark.skipif(
    not os.environ.get("TLDR_JAX_MULTIHOST_TEST"),
    reason="slow (two JAX processes); set TLDR_JAX_MULTIHOST_TEST=1 to run",
)
def test_multi_process_cpu():
    """Two processes x 2 CPU devices (gloo collectives): the multi-host code path, uneven local batches."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    code = f"TINY = {TINY!r}\n" + MULTIHOST_SCRIPT
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), port], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(next(x for x in out.splitlines() if x.startswith("REPORT"))[6:]))
    assert [r["rows"] for r in reports] == [3, 2]
    for r in reports:
        assert r["processes"] == 2 and r["devices"] == 4 and r["max_diff"] < 1e-5, r
