"""Stage-1 configs: `--config=experiments/configs/stage1.py:VARIANT`, VARIANT one of

  demo    the embedded face world (48x48 grid), K=20, E=10; a few minutes on 2 CPU cores
  surrey  scans sampled from the real Surrey model (../shared/data/surrey), K=40, E=6; with
          --config.data.source=model --config.data.model_path=PATH from any Basel, FLAME,
          FaceScape or Surrey file instead
  hard    Surrey samples that are hard for identity codes: heavy-tailed identities (Student t,
          df 3), expressions at 1.5x, 1 mm noise, 150 + 60 identities x 4 scans, K=20
  folder  a user's scan folder: --config.data.scan_dir=DIR
  paper   K=199, E=100 on a 230x230 face-world grid (52900 vertices), streamed (data.stream):
          sized for a GPU; on a CPU try --config.train.num_steps=20
  tiny    a few seconds, for tests

Any field can be overridden, e.g. `--config.train.num_steps=500 --config.model.shape_dim=16`.
"""

import dataclasses

import ml_collections

from sfm_jax import stage1
from sfm_jax.errors import InputError

VARIANTS = ("demo", "surrey", "hard", "folder", "paper", "tiny")


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise InputError(f"unknown stage-1 config variant {variant!r}; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "world"          # world | tfds | surrey | model | folder
  c.data.resolution = 48           # world: template grid side (V = resolution^2)
  c.data.train_identities = 120
  c.data.test_identities = 40
  c.data.scans_per_identity = 4
  c.data.noise_mm = 0.3
  c.data.tfds_config = "demo"      # tfds: SyntheticFaceScans config
  c.data.tfds_data_dir = "runs/tfds"
  c.data.surrey_dir = "../shared/data/surrey"
  c.data.expression_scale = 1.0    # surrey / model: expression weights times this
  c.data.identity_tail_df = 0.0    # surrey / model: > 2 draws Student-t identities (unit
                                   # variance, heavier tails); 0 Gaussian
  c.data.model_path = ""           # model: any Basel .mat/.h5, FLAME .pkl, FaceScape .npz,
                                   # Surrey .bin or baseline.npz to sample scans from
  c.data.scan_dir = ""             # folder: the scan folder
  c.data.test_fraction = 0.2       # folder: share of identities held out
  c.data.allow_outside_paths = False  # folder: accept meta.csv paths that leave the folder
  c.data.stream = False            # True: training scans in a scan store on disk
                                   # (WORKDIR/data/), read a batch at a time; host memory
                                   # then does not grow with the number of scans

  # The PCA initialisation: "exact" (every scan in memory, Gram matrices), "streamed" (scans
  # read in blocks, subspace iteration to `tol`), or "auto" (streamed with data.stream).
  c.pca = ml_collections.ConfigDict()
  c.pca.method = "auto"
  c.pca.tol = 1e-6                 # streamed: residual of every wanted direction, relative to
                                   # the largest eigenvalue
  c.pca.max_iterations = 30        # streamed: passes over the scans at most
  c.pca.oversample = 10            # streamed: extra directions iterated along
  c.pca.block_rows = 128           # streamed: scans read at a time

  c.model = ml_collections.ConfigDict()
  c.model.shape_dim = 20           # K
  c.model.expr_dim = 10            # E

  # The SFM objective: every field of sfm_jax.stage1.Objective with its default (written once,
  # there); 0 switches a term off.
  c.objective = ml_collections.ConfigDict(dataclasses.asdict(stage1.Objective()))
  # The baseline (stage1.baseline_objective): the same terms with Gaussian codes, no spherical
  # terms, and these overrides (its Tikhonov prior).
  c.baseline = ml_collections.ConfigDict(dict(weight_shape_prior=0.001, weight_expr_prior=0.001))

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 3000
  c.train.global_batch_size = 64   # over all devices and processes; divisible by the device count
  c.train.lr_basis = 3e-4
  c.train.lr_codes = 1e-2
  c.train.lr_prototypes = 1e-2
  c.train.lr_centers = 1e-2
  c.train.warmup_steps = 100
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.max_to_keep = 2
  c.train.async_checkpoints = "auto"  # background saves: on | off | auto (on accelerators
                                      # only: on a CPU they hold a second copy of the state)
  c.train.stop_after_steps = 0     # > 0: checkpoint and exit once the run has taken this
                                   # many steps, counted over its phases in order (time-sliced jobs)
  c.train.skip_nonfinite = 0       # > 0: skip up to this many non-finite steps (their update
                                   # is not applied) before stopping; 0: the first one stops
  c.train.sleep_per_step = 0.0     # testing only: slows training so a test can kill it mid-run

  # Data parallelism (sfm_jax.parallel): the same step on 1 or many devices and hosts.
  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "jit"           # jit (NamedSharding, default) | pmap (single process)
  c.parallel.distributed = False    # call jax.distributed.initialize (multi-host)
  c.parallel.coordinator_address = ""  # else JAX_COORDINATOR_ADDRESS or cluster detection
  c.parallel.num_processes = 0      # else JAX_NUM_PROCESSES
  c.parallel.process_id = -1        # else JAX_PROCESS_ID

  c.eval = ml_collections.ConfigDict()
  c.eval.fit_steps = 150
  c.eval.fit_rounds = 3
  c.eval.fit_learning_rate = 0.02

  if variant == "surrey":
    c.data.source = "surrey"
    c.data.train_identities, c.data.test_identities = 150, 50
    c.model.shape_dim, c.model.expr_dim = 40, 6
  elif variant == "hard":
    c.data.source = "surrey"
    c.data.train_identities, c.data.test_identities = 150, 60
    c.data.noise_mm, c.data.expression_scale, c.data.identity_tail_df = 1.0, 1.5, 3.0
    c.model.shape_dim, c.model.expr_dim = 20, 6
  elif variant == "folder":
    c.data.source = "folder"
  elif variant == "paper":
    c.data.resolution = 230
    c.data.train_identities, c.data.test_identities, c.data.scans_per_identity = 1000, 200, 4
    c.data.stream = True
    c.pca.max_iterations = 8       # 20 s a pass on 2 CPU cores; components past the face
                                   # world's 16 identity dimensions are noise and never settle
    c.model.shape_dim, c.model.expr_dim = 199, 100
    c.train.num_steps, c.train.global_batch_size = 20000, 128
    c.train.log_every, c.train.checkpoint_every = 200, 2000
  elif variant == "tiny":
    c.data.resolution = 12
    c.data.train_identities, c.data.test_identities, c.data.scans_per_identity = 10, 4, 3
    c.model.shape_dim, c.model.expr_dim = 4, 3
    c.train.num_steps, c.train.global_batch_size = 40, 8
    c.train.warmup_steps, c.train.log_every, c.train.checkpoint_every = 5, 5, 10
    c.eval.fit_steps, c.eval.fit_rounds = 30, 2
  return c
