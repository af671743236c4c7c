"""Streaming (issue 17): the scan store, the streamed PCA, every source streamed, a
streamed run equal to an in-memory one, host memory that does not grow with the scans, and
held-out images scored a chunk at a time."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import stage1 as stage1_main
from experiments.configs import stage1 as stage1_configs
from sfm_jax import face_world, pca, stage1
from sfm_jax.errors import InputError
from sfm_jax.io import scan_store, write_scan_folder
from sfm_jax.model import load_model
from sfm_jax.sources import scans as scan_sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SURREY = os.path.join(ROOT, "..", "shared", "data", "surrey")


def _subspace_angle(a, b) -> float:
  """Largest principal angle (radians) between the row spaces of `a` and `b` `[k, ...]`."""
  qa = np.linalg.qr(a.reshape(len(a), -1).T)[0]
  qb = np.linalg.qr(b.reshape(len(b), -1).T)[0]
  sine = np.linalg.norm(qa - qb @ (qb.T @ qa), 2)  # accurate for small angles (arccos is not)
  return float(np.arcsin(min(sine, 1.0)))


def _write_store(path, scans, labels, key="k", chunk=7):
  chunks = ((scans[i:i + chunk], labels[i:i + chunk]) for i in range(0, len(scans), chunk))
  return scan_store.write_scan_store(str(path), chunks, key=key)


# --------------------------------------------------------------------------------------------
# The scan store.


def test_store_rows_are_the_array_rows(tmp_path, rng):
  scans = rng.normal(size=(30, 11, 3)).astype(np.float32)
  labels = rng.integers(-1, 5, 30)
  store = _write_store(tmp_path / "s.f32", scans, labels)
  assert len(store) == 30 and store.shape == (30, 11, 3)
  np.testing.assert_array_equal(store.identity, labels)
  for index in (np.array([4, 3, 5, 6, 29, 0, 0, -1]), np.arange(30), rng.permutation(30)[:9],
                np.array([], np.int64)):
    np.testing.assert_array_equal(store[index], scans[index])
  np.testing.assert_array_equal(store[5:12:3], scans[5:12:3])
  np.testing.assert_array_equal(store[7], scans[7])
  with pytest.raises(IndexError):
    store[np.array([30])]
  # Reopened with the same key it is the same store; another key or a wrong size: none.
  again = scan_store.open_scan_store(str(tmp_path / "s.f32"), "k")
  np.testing.assert_array_equal(again[np.arange(30)], scans)
  assert scan_store.open_scan_store(str(tmp_path / "s.f32"), "other") is None
  with open(tmp_path / "s.f32", "r+b") as f:
    f.truncate(29 * 11 * 3 * 4)
  assert scan_store.open_scan_store(str(tmp_path / "s.f32"), "k") is None
  with pytest.raises(InputError, match="s.f32: ends before row 29"):
    store[np.array([28, 29])]  # opened before the damage: a clear error, not garbage
  assert scan_store.open_scan_store(str(tmp_path / "missing.f32"), "k") is None


def test_store_refuses_bad_chunks_and_leaves_nothing(tmp_path, rng):
  scans = rng.normal(size=(10, 4, 3)).astype(np.float32)
  scans[8, 2, 1] = np.nan
  with pytest.raises(InputError, match="scan 8 has non-finite"):
    _write_store(tmp_path / "a.f32", scans, np.zeros(10), chunk=3)
  bad_shapes = iter([(scans[:2], [0, 0]), (np.zeros((2, 5, 3)), [1, 1])])
  with pytest.raises(InputError, match="one V"):
    scan_store.write_scan_store(str(tmp_path / "b.f32"), bad_shapes, key="k")
  with pytest.raises(InputError, match="2 labels for a chunk of 3"):
    scan_store.write_scan_store(str(tmp_path / "c.f32"), iter([(scans[:3], [0, 0])]), key="k")
  assert sorted(os.listdir(tmp_path)) == []  # no store, no temporary file


def test_row_store_holds_rows_of_any_shape_and_dtype(tmp_path, rng):
  """The general row store under the scan store: uint8 image rows, bool rows, scalar int rows,
  written in chunks, read back by index, whole (`np.asarray`), and reopened only with its key
  and dtype."""
  from sfm_jax.io import row_store
  images = rng.integers(0, 256, (13, 5, 4, 3)).astype(np.uint8)
  flags = rng.random((13, 7)) < 0.5
  labels = rng.integers(-5, 5, 13).astype(np.int32)
  for name, rows in (("i.u8", images), ("f.bool", flags), ("l.i32", labels)):
    with row_store.RowStoreWriter(str(tmp_path / name), key="k", dtype=rows.dtype) as writer:
      for start in range(0, 13, 4):
        writer.append(rows[start:start + 4])
    store = writer.store
    assert store.shape == rows.shape and store.dtype == rows.dtype and len(store) == 13
    index = rng.permutation(13)[:6]
    np.testing.assert_array_equal(store[index], rows[index])
    np.testing.assert_array_equal(np.asarray(store), rows)
    again = row_store.open_row_store(str(tmp_path / name), "k", dtype=rows.dtype)
    np.testing.assert_array_equal(again[2:9], rows[2:9])
    assert row_store.open_row_store(str(tmp_path / name), "k", dtype=np.float64) is None
    assert row_store.open_row_store(str(tmp_path / name), "other") is None
  with pytest.raises(IndexError, match="indexes rows only"):
    store[:, 0]
  with pytest.raises(InputError, match="every row has one shape"):
    with row_store.RowStoreWriter(str(tmp_path / "bad.u8"), key="k", dtype=np.uint8) as writer:
      writer.append(images[:2])
      writer.append(images[:2, :, :3])
  with pytest.raises(InputError, match="no rows to store"):
    with row_store.RowStoreWriter(str(tmp_path / "empty.u8"), key="k", dtype=np.uint8):
      pass
  assert sorted(os.listdir(tmp_path)) == sorted(
      f"{n}{e}" for n in ("i.u8", "f.bool", "l.i32") for e in ("", ".json"))  # nothing else


# --------------------------------------------------------------------------------------------
# Streamed PCA.


def test_subspace_iteration_finds_the_svd_directions(rng):
  # Rows with a known, decaying spectrum: the top directions are those of numpy's SVD.
  left = np.linalg.qr(rng.normal(size=(300, 40)))[0]
  right = np.linalg.qr(rng.normal(size=(500, 40)))[0]
  singular = 100.0 * 0.8 ** np.arange(40)
  rows = (left * singular) @ right.T
  it = pca.SubspaceIteration(500, 5, oversample=6, tol=1e-10, seed=3)
  while not it.converged and it.iterations < 200:
    it.begin_pass()
    for start in range(0, 300, 64):
      it.add(rows[start:start + 64])
    it.end_pass()
  assert it.converged
  _, s, vt = np.linalg.svd(rows, full_matrices=False)
  assert _subspace_angle(it.directions, vt[:5]) < 1e-8
  np.testing.assert_allclose(it.std, s[:5] / np.sqrt(300), rtol=1e-9)
  # One sign convention with the exact solver: the largest entry of each direction positive.
  exact, exact_std = pca.principal_directions(rows, 5)
  np.testing.assert_allclose(it.directions, exact, atol=1e-7)
  np.testing.assert_allclose(exact_std, s[:5] / np.sqrt(300), rtol=1e-9)


def test_identity_blocks_keep_identities_whole():
  identity = np.array([2, 0, 2, -1, 1, 0, 2, 1, -1])
  blocks = stage1.identity_blocks(identity, max_rows=3)
  # Sorted keys: the two unlabelled rows (each its own identity), 0 x2, 1 x2, 2 x3.
  assert [sorted(identity[b].tolist()) for b in blocks] == [[-1, -1], [0, 0], [1, 1], [2, 2, 2]]
  assert sorted(np.concatenate(blocks).tolist()) == list(range(9))
  assert [len(b) for b in stage1.identity_blocks(identity, max_rows=100)] == [9]
  assert [len(b) for b in stage1.identity_blocks(identity, max_rows=1)] == [1, 1, 2, 2, 3]


def test_streamed_pca_equals_batch_pca():
  scans = face_world.make_scans(40, 4, 5, world=face_world.FaceWorld(resolution=16))
  identity = scans.identity.copy()
  identity[[0, 1, 17]] = -1  # unlabelled scans are their own identity in both
  exact = stage1.pca_init(scans.vertices, identity, num_shape=6, num_expr=4)
  streamed = stage1.pca_init_streamed(scans.vertices, identity, num_shape=6, num_expr=4,
                                      block_rows=24, tol=1e-9)
  assert _subspace_angle(exact.shape_basis, streamed.shape_basis) < 1e-5
  assert _subspace_angle(exact.expr_basis, streamed.expr_basis) < 1e-5
  np.testing.assert_allclose(streamed.shape_std, exact.shape_std, rtol=1e-6)
  np.testing.assert_allclose(streamed.expr_std, exact.expr_std, rtol=1e-6)
  np.testing.assert_allclose(streamed.mean, exact.mean, atol=1e-9)
  # Same sign convention, so the bases and codes agree entry by entry, not only as subspaces.
  np.testing.assert_allclose(streamed.shape_basis, exact.shape_basis, atol=1e-5)
  np.testing.assert_allclose(streamed.shape_codes, exact.shape_codes, atol=1e-4)
  np.testing.assert_allclose(streamed.radius, exact.radius, rtol=1e-6)
  np.testing.assert_allclose(streamed.variance_kept(), exact.variance_kept(), rtol=1e-6)
  assert 0 < exact.variance_kept()[0] < 1


# --------------------------------------------------------------------------------------------
# Every source streamed gives the in-memory rows.


def _world_config():
  config = stage1_configs.get_config("tiny").data
  config.train_identities = 30  # two chunks of identities
  return config


def _assert_same_data(config, tmp_path, seed=2):
  in_memory = scan_sources.load(config, seed=seed)
  config.stream = True
  streamed = scan_sources.load(config, seed=seed, store_dir=str(tmp_path))
  assert isinstance(streamed.train_scans, scan_store.ScanStore)
  assert isinstance(streamed.test_scans, scan_store.ScanStore)
  np.testing.assert_array_equal(streamed.train_scans[np.arange(len(in_memory.train_scans))],
                                in_memory.train_scans)
  np.testing.assert_array_equal(streamed.train_identity, in_memory.train_identity)
  np.testing.assert_array_equal(streamed.test_scans[np.arange(len(in_memory.test_scans))],
                                in_memory.test_scans)
  np.testing.assert_array_equal(streamed.test_identity, in_memory.test_identity)
  return streamed


def test_streamed_world_is_the_in_memory_world_and_is_reused(tmp_path, monkeypatch):
  config = _world_config()
  first = _assert_same_data(config, tmp_path)
  written = os.stat(first.train_scans.path).st_mtime_ns
  first_rows = first.train_scans[np.arange(5)]

  generate = scan_sources.world_scan_chunks

  def test_split_only(*args, identity_offset=0, **kwargs):
    assert identity_offset > 0, "the stored training scans were generated again"
    yield from generate(*args, identity_offset=identity_offset, **kwargs)

  monkeypatch.setattr(scan_sources, "world_scan_chunks", test_split_only)
  again = scan_sources.load(config, seed=2, store_dir=str(tmp_path))
  assert os.stat(again.train_scans.path).st_mtime_ns == written
  monkeypatch.undo()
  other_seed = scan_sources.load(config, seed=3, store_dir=str(tmp_path))  # other data: rebuilt
  assert not np.array_equal(other_seed.train_scans[np.arange(5)], first_rows)


def test_streamed_folder_is_the_in_memory_folder(tmp_path):
  scans = face_world.make_scans(12, 3, 4, world=face_world.FaceWorld(resolution=10))
  folder = tmp_path / "folder"
  write_scan_folder(folder, scans.vertices, [f"p{i}" for i in scans.identity],
                    triangles=scans.triangles)
  config = stage1_configs.get_config("folder").data
  config.scan_dir, config.test_fraction = str(folder), 0.3
  streamed = _assert_same_data(config, tmp_path / "store")
  # A changed scan changes the key: the store is written again.
  os.utime(folder / "scans" / "00000.ply", ns=(1, 1))
  again = scan_sources.load(config, seed=2, store_dir=str(tmp_path / "store"))
  assert again.train_scans.key != streamed.train_scans.key


@pytest.mark.skipif(not os.path.isdir(SURREY), reason=f"Surrey model not found at {SURREY}")
def test_streamed_surrey_samples_are_the_in_memory_samples(tmp_path):
  config = stage1_configs.get_config("hard").data
  config.surrey_dir = SURREY
  config.train_identities, config.test_identities = 30, 4
  _assert_same_data(config, tmp_path)


def test_stream_needs_a_store_folder():
  config = _world_config()
  config.stream = True
  with pytest.raises(InputError, match="needs a folder for the scan store"):
    scan_sources.load(config, seed=0)


# --------------------------------------------------------------------------------------------
# Stage 1 streamed.


def _tiny(stream: bool):
  config = stage1_configs.get_config("tiny")
  config.data.stream, config.pca.method = stream, "streamed"
  config.train.num_steps, config.eval.fit_steps, config.eval.fit_rounds = 20, 5, 1
  return config


def test_streamed_stage1_trains_the_in_memory_models_exactly(tmp_path):
  results = {}
  for stream in (False, True):
    results[stream] = stage1_main.train_and_evaluate(_tiny(stream), str(tmp_path / str(stream)))
  for name in ("sfm", "baseline", "pca"):
    a = load_model(str(tmp_path / "False" / f"{name}_model.npz"))
    b = load_model(str(tmp_path / "True" / f"{name}_model.npz"))
    for field in ("mean", "shape_basis", "expr_basis", "radius"):
      np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=name + field)
  assert results[True]["models"] == results[False]["models"]
  phases = [row["phase"] for row in results[True]["phases"]]
  assert phases == ["data", "PCA", "train sfm", "train baseline", "evaluate"]
  assert all(row["peak_memory_gb"] > 0 for row in results[True]["phases"])
  # The streamed run cached its PCA beside the store; a rerun reads both back.
  data = tmp_path / "True" / "data"
  assert sorted(os.listdir(data)) == ["pca_init.npz", "test_scans.f32", "test_scans.f32.json",
                                      "train_scans.f32", "train_scans.f32.json"]
  rerun = stage1_main.train_and_evaluate(_tiny(True), str(tmp_path / "True"))
  assert rerun["models"] == results[True]["models"]


@pytest.mark.parametrize("field,value,message", [
    ("method", "exact", "pca.method='exact' holds every scan in memory"),
    ("method", "svd", "pca.method must be 'auto', 'exact' or 'streamed'"),
    ("tol", 0.0, "pca.tol must be > 0"),
    ("block_rows", 0, "pca.block_rows >= 1")])
def test_bad_pca_settings_are_refused_before_anything_is_written(tmp_path, field, value, message):
  config = _tiny(True)
  config.pca[field] = value
  with pytest.raises(InputError, match=message):
    stage1_main.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


_MEMORY_RUN = """
import json, sys
from experiments import stage1
from experiments.configs import stage1 as configs
from sfm_jax.progress import peak_memory_bytes
config = configs.get_config("tiny")
config.data.resolution, config.data.train_identities = 28, int(sys.argv[2])
config.data.scans_per_identity, config.data.stream = 4, True
config.model.shape_dim, config.model.expr_dim = 8, 4
config.train.num_steps, config.train.global_batch_size = 4, 64
config.eval.fit_steps, config.eval.fit_rounds = 2, 1
stage1.train_and_evaluate(config, sys.argv[1])
print(json.dumps({"peak": peak_memory_bytes()}))
"""


@pytest.mark.slow
def test_streamed_run_memory_does_not_grow_with_the_scans(tmp_path):
  def peak(identities):
    result = subprocess.run([sys.executable, "-c", _MEMORY_RUN, str(tmp_path / str(identities)),
                             str(identities)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["peak"]

  small, large = peak(500), peak(5000)  # 2 000 and 20 000 scans of 784 vertices
  in_memory_bytes = 20000 * 784 * 3 * 4  # the 20k scans as float32 arrays: 188 MB
  # The extra 18 000 scans cost almost nothing: far less than holding them (an exact PCA would
  # also make a float64 copy, twice this).
  assert large - small < in_memory_bytes / 4, (small, large)


# --------------------------------------------------------------------------------------------
# Held-out evaluation a chunk at a time (stage 2 at paper scale).


def test_held_out_scores_made_a_chunk_at_a_time_equal_whole_array_scores(tmp_path, rng):
  """`inference.score_in_chunks` on a split whose truth is a row store: each call of `produce`
  gets at most `chunk` rows, the scores equal `evaluation.evaluate_images` on whole arrays (and
  further neutral keys their own 3D rows), and memory never holds an `[N, V, 3]` array."""
  import tracemalloc

  from sfm_jax import evaluation, inference, metrics
  from sfm_jax.io import row_store
  from sfm_jax.sources.images import Split
  template = face_world.face_template(60)  # V = 3600
  count, vertices = 64, len(template.vertices)
  truth = (template.vertices[None] + rng.normal(scale=2.0, size=(count, vertices, 3))).astype(
      np.float32)
  with row_store.RowStoreWriter(str(tmp_path / "neutral.f32"), key="k",
                                dtype=np.float32) as writer:
    writer.append(truth)
  identity = np.repeat(np.arange(16), 4).astype(np.int32)
  identity[::7] = -1  # unlabelled rows count for 3D and landmarks only
  landmarks = rng.uniform(5, 60, (count, 68, 2)).astype(np.float32)
  split = Split(images=np.zeros((count, 2, 2, 3), np.uint8), landmarks=landmarks,
                visible=rng.random((count, 68)) < 0.9, identity=identity, neutral=writer.store,
                posed=None, names=[str(i) for i in range(count)])
  predicted = {"neutral": truth + rng.normal(scale=1.0, size=truth.shape).astype(np.float32),
               "shape_codes": np.eye(16)[identity % 16] + rng.normal(scale=0.3, size=(count, 16)),
               "landmarks": landmarks + rng.normal(size=landmarks.shape).astype(np.float32)}
  other = truth + 3.0 * rng.normal(size=truth.shape).astype(np.float32)
  asked = []

  def produce(rows):
    asked.append(rows)
    return {"shape_codes": predicted["shape_codes"][rows],
            "landmarks": predicted["landmarks"][rows], "neutral": predicted["neutral"][rows],
            "other": other[rows]}

  score = lambda: inference.score_in_chunks(produce, split, landmark_vertices=template.landmarks,
                                            seed=3, chunk=8)
  score()  # compiles the alignment and the metrics' programs
  asked.clear()
  tracemalloc.start()
  rows, codes = score()
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert [(r.start, r.stop) for r in asked] == [(i, i + 8) for i in range(0, count, 8)]
  whole = evaluation.evaluate_images(predicted, identity=identity, landmarks=landmarks,
                                     visible=split.visible, landmark_vertices=template.landmarks,
                                     neutral=truth, seed=3)
  assert rows["neutral"] == whole
  now = template.landmarks[list(metrics.NOW_LANDMARKS)]
  assert rows["other"] == metrics.error_summary(metrics.now_aligned_errors(other, truth, now))
  np.testing.assert_array_equal(codes, predicted["shape_codes"])
  # In units of one [N, V] float64 array: the errors of the two keys and a copy for the median
  # (3.3 measured). Scoring whole arrays held the predictions and the truth as float64
  # [N, V, 3], 6 units, beside the errors.
  assert peak < 4 * count * vertices * 8, peak / (count * vertices * 8)
  only_3d = inference.neutral_error(lambda rows: other[rows], split, template.landmarks, chunk=5)
  assert only_3d == rows["other"]

