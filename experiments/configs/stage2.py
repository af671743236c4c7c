"""Stage-2 configs: `--config=experiments/configs/stage2.py:VARIANT`, VARIANT one of

  demo    rendered face-world images at 96 px (48x48 mesh, 1000 + 100 identities x 2), a
          ResNet-10 of width 16 reading the landmarks too; both models in about 7 to 10 minutes
          on 2 CPU cores. Needs the stage-1 demo run (`runs/stage1/sfm_model.npz` and `baseline_model.npz`).
  folder  a user's photo folder: --config.data.image_dir=DIR (meta.csv + images, a .pts beside
          each or dlib's landmarks; optional meta.csv columns `mesh` and `neutral`, registered
          meshes of the face as photographed and of its person's neutral face), with
          --config.init_model=PATH a stage-1 model in correspondence with nothing else needed

Any variant: --config.data.scan_dir=DIR (a scan folder in the stage-1 model's topology) renders
those scans under random pose, light and albedo and mixes them into every batch
(data.scan_fraction, default 0.5) for the 3D vertex term.
  paper   224 px, ResNet-50, K = 199, a 230x230 mesh (the stage-1 `paper` model in
          runs/stage1_paper), 2000 + 200 identities x 8, streamed (data.stream: 25 GB of
          images and 3D truth on disk in WORKDIR/data); sized for GPUs
  tiny    seconds, for tests

`init_model` is the stage-1 SFM model (`sfm_model.npz`); `baseline_model` the stage-1 Gaussian
baseline (`baseline_model.npz`), by default the file of that name beside `init_model`. Any field can be
overridden, e.g. `--config.train.num_steps=200 --config.init_model=runs/s1/sfm_model.npz`.
"""

import dataclasses

import ml_collections

from sfm_jax import stage2
from sfm_jax.errors import InputError

VARIANTS = ("demo", "folder", "paper", "tiny")


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise InputError(f"unknown stage-2 config variant {variant!r}; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.seed = 0
  c.init_model = "runs/stage1/sfm_model.npz"
  c.baseline_model = ""             # default: baseline_model.npz beside init_model; "none" skips it

  c.data = ml_collections.ConfigDict()
  c.data.source = "world"           # world (rendered in memory) | tfds | folder
  c.data.image_size = 96            # S: images are S x S (folder photos are cropped to it)
  c.data.resolution = 48            # world: mesh grid side; must match the stage-1 model
  c.data.train_identities = 1000    # many people, few photos each: less to memorise
  c.data.test_identities = 100
  c.data.images_per_identity = 2
  c.data.unlabelled_fraction = 0.1
  c.data.occluder_probability = 0.2
  c.data.tfds_config = "demo"       # tfds: SyntheticFaceImages config
  c.data.tfds_data_dir = "runs/tfds"
  c.data.image_dir = ""             # folder: meta.csv (path,identity), images, .pts beside each
  c.data.test_fraction = 0.2        # folder: share of identities held out
  c.data.crop_margin = 0.25         # folder: border around the landmarks' box (fraction)
  c.data.skip_bad = False           # folder: skip (and count) unreadable images
  c.data.allow_outside_paths = False  # folder: accept meta.csv paths that leave the folder
  c.data.photo_meshes = "all"       # folder: meshes of meta.csv supervise training photos and
                                    # score held-out ones ("all") or only score ("held_out")
  # Rendered scans (any variant): a scan folder in the stage-1 model's topology (e.g. the one
  # stage 1 trained on) rendered under random pose, light, skin albedo and background, with
  # their landmarks and 3D truth, mixed into every training batch for the vertex term.
  c.data.scan_dir = ""
  c.data.scan_fraction = 0.5        # share of each training batch from the rendered scans
  c.data.scan_views = 2             # images rendered per scan
  c.data.stream = False             # world: images and 3D truth written once to row stores in
                                    # WORKDIR/data (reused by reruns), read a batch at a time, so
                                    # host memory does not grow with the set (the `paper` default)
  c.data.mirror = False             # also train on the mirror image of every training image
                                    # and scan render, as people of their own (sfm_jax.mirror;
                                    # face world: needs an odd resolution)
  c.data.scan_test_fraction = 0.2   # identities of scan_dir stage 1 held out (its data.test_fraction):
                                    # never rendered for training

  c.model = ml_collections.ConfigDict()
  c.model.depth = "resnet10"        # resnet10 | resnet18 | resnet34 | resnet50
  c.model.width = 16                # channels of the first stage (64 in the standard ResNets)
  c.model.albedo_dim = 10
  c.model.landmark_features = 128   # > 0: the encoder also reads the 68 landmark positions
                                    # (an MLP beside the image trunk); 0: pixels only
  c.model.landmark_norm = "whiten"  # the MLP's inputs: whitened with the training data's
                                    # statistics | "batch" (a BatchNorm) | "none"
  c.model.whitening_regularisation = 1e-2  # whiten: added to each variance, relative to the largest
  c.model.landmark_linear = True    # the features also carry the normalised landmarks (a linear
                                    # path beside the MLP to every head)
  c.model.shape_from = "landmarks"  # the shape head reads: the landmark features only (so the
                                    # pixels cannot identify trained people) | "all" features
  c.model.shape_head_scale = 1.0    # the shape head's initial kernel, times LeCun normal's: an
                                    # SFM code R z/|z| turns faster from a smaller one
  c.model.batch_groups = 2          # the backbone runs each device's batch as this many groups
                                    # side by side (the same values; BatchNorm over the whole
                                    # batch): faster on a multi-core CPU (networks.Backbone)

  # The SFM objective: every field of sfm_jax.stage2.Objective with its default (written once,
  # there; code_kind is set per model); 0 switches a term off.
  c.objective = ml_collections.ConfigDict(
      {k: v for k, v in dataclasses.asdict(stage2.Objective()).items() if k != "code_kind"})
  if variant in ("demo", "folder"):
    # The margin softmax over the training people (CosFace on SFM's codes) is off here: with 2
    # images per person it cost SFM on held-out people, in 3D and in verification, on every
    # seed of `demo` and on the Surrey photos (WORKSPACE.md, "The margin term"). The centre term
    # stays. `paper` (8 images per person, the paper's setting) and `tiny` (the tests run every
    # term) keep the margin's default. At `demo` scale with 8 images per person it raised SFM's
    # verification by 0.007 and cost 0.037 mm (WORKSPACE.md, "Eight images per person").
    c.objective.weight_margin = 0.0
  # The baseline (stage2.baseline_objective): the same pipeline from the stage-1 baseline,
  # Gaussian codes with a Tikhonov prior, no identity terms. Each model's code weight is its
  # best of 0, 0.25 and 1 on `demo` (3 seeds, WORKSPACE.md): 0.25 for SFM, 1 for the baseline.
  c.baseline = ml_collections.ConfigDict({"weight_shape_prior": 1e-3, "weight_code": 1.0})

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.global_batch_size = 32
  c.train.lr_encoder = 2e-3
  c.train.lr_residual = 1e-4
  c.train.lr_albedo = 1e-2
  c.train.lr_identity = 1e-2
  c.train.lr_schedule = "constant"  # after a linear warm-up over train.warmup_steps: constant,
                                    # or cosine, a decay to 10% at num_steps (stage 1's schedule)
  c.train.warmup_steps = 0
  c.train.parameter_average = 0.99  # > 0: evaluate and export a moving average of the parameters
                                    # with this decay (window about 1 / (1 - decay) steps); 0 = off
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.max_to_keep = 2
  c.train.async_checkpoints = "auto"  # background saves: on | off | auto (on accelerators
                                      # only: on a CPU they hold a second copy of the state)
  c.train.stop_after_steps = 0      # > 0: checkpoint and exit once the run has taken this
                                    # many steps, counted over its phases in order (time-sliced jobs)
  c.train.skip_nonfinite = 0        # > 0: skip up to this many non-finite steps (their update
                                    # is not applied) before stopping; 0: the first one stops
  c.train.float64 = False           # numerical checks: train in float64 (jax_enable_x64)
  c.train.sleep_per_step = 0.0      # testing only: slows training so a test can kill it mid-run

  # Identity pretraining of the encoder trunk (CosFace on its features over rendered people:
  # the face world's or scan_dir's) before reconstruction; shared by both models. 0 steps = off.
  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 0
  c.pretrain.source = "auto"        # world (fresh face-world people) | scans (the people of
                                    # data.scan_dir) | auto: scans when scan_dir is set
  c.pretrain.identities = 1000      # world: people rendered
  c.pretrain.images_per_identity = 4  # world: images per person
  c.pretrain.scan_views = 4         # scans: renders per scan
  c.pretrain.global_batch_size = 64
  c.pretrain.lr = 2e-3
  c.pretrain.lr_prototypes = 1e-2
  c.pretrain.warmup_steps = 50
  c.pretrain.margin_scale = 32.0
  c.pretrain.margin = 0.35

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "jit"           # stage 2 runs jit only (BatchNorm statistics are global)
  c.parallel.distributed = False
  c.parallel.coordinator_address = ""
  c.parallel.num_processes = 0
  c.parallel.process_id = -1

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True             # False: train and export the models only (no evaluation,
                                    # report or pictures)
  c.eval.batch_size = 64
  c.eval.gallery = 6                # held-out images shown in gallery.png
  c.eval.seen_images = 300          # labelled training images of the seen-identity diagnostic
  c.eval.fit_steps = 400            # Adam steps of the per-image landmark-fit reference
  c.eval.landmark_noise = 1.0       # > 0: also score each network reading the held-out
                                    # landmarks plus this much Gaussian noise (pixels per
                                    # coordinate), as from a detector; 0 = off
  c.eval.flip_average = False       # also score each network's shape averaged over the image
                                    # and its mirror image (rows "<name>, flip-averaged"; the
                                    # face world: odd resolutions only)
  c.eval.noise_curve = (0.5, 1.0, 2.0, 4.0)  # the same at each of these levels (pixels, > 0):
                                    # landmark_noise.png and a table in the report; () = off

  if variant == "folder":
    c.data.source = "folder"
    c.data.image_size = 128
    c.eval.flip_average = True  # photo annotations flip exactly (WORKSPACE.md, "Mirror images")
  elif variant == "paper":
    c.init_model = "runs/stage1_paper/sfm_model.npz"
    c.data.image_size, c.data.resolution = 224, 230  # the stage-1 paper grid (52900 vertices)
    c.data.train_identities, c.data.test_identities, c.data.images_per_identity = 2000, 200, 8
    c.data.stream = True  # 17600 images: 2.6 GB of pixels, 22 GB of 3D truth (on disk)
    c.model.depth, c.model.width, c.model.albedo_dim = "resnet50", 64, 80
    c.objective.render_groups = 1  # the groups help XLA:CPU; sized for an accelerator
    c.model.batch_groups = 1
    c.train.num_steps, c.train.global_batch_size = 50000, 64
    # ResNet-50 at 2e-3 from the first step throws the faces off the images within two steps
    # (landmark term 0.20 -> 3.3 -> 7.9 at step 12, nothing rendered); over an 8-step warm-up it
    # stayed at 0.2 to 0.55 and fell to 0.28 (WORKSPACE.md, stop 46). 2% of the steps, a usual
    # share, not tuned; runs of fewer steps set their own (it must stay below num_steps).
    c.train.warmup_steps = 1000
    c.train.log_every, c.train.checkpoint_every = 200, 2000
  elif variant == "tiny":
    c.data.image_size, c.data.resolution = 32, 12  # the stage-1 tiny grid
    c.data.train_identities, c.data.test_identities, c.data.images_per_identity = 6, 3, 3
    c.data.occluder_probability = 0.0
    c.objective.render_groups = 1  # one program compiles faster, and batches of 8 gain nothing
    c.objective.landmark_noise = 0.5  # the tests run every option (and resume its noise exactly)
    c.model.batch_groups = 1
    c.model.width, c.model.albedo_dim, c.model.landmark_features = 8, 2, 16
    c.train.num_steps, c.train.global_batch_size = 12, 8
    c.train.parameter_average = 0.0  # 12 steps: an average would be their even mean
    c.train.log_every, c.train.checkpoint_every = 2, 4
    c.eval.batch_size, c.eval.gallery, c.eval.seen_images = 8, 3, 12
    c.eval.fit_steps = 100
    c.eval.noise_curve = (0.5, 1.0)
    c.pretrain.identities, c.pretrain.images_per_identity = 8, 2  # (steps stay 0: tests set them)
    c.pretrain.global_batch_size, c.pretrain.warmup_steps = 8, 2
  return c
