"""Every key of a fundax training config, with the paper's settings where it gives them.

Experiment configs (``experiments/configs/*.py``) start from ``get_config()`` here
and override a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.finding = "macular_hole"
    # "guided_cnn" (the paper's network, §2.2) or "inception_v3" (its baseline, trained with BCE alone).
    config.model = "guided_cnn"

    # Data: with the synthetic dataset, fundax prepares it on first use.
    config.dataset = "fundus_findings/synthetic"
    config.data_dir = ""  # set by the train command; evaluation finds the data through it
    config.image_size = 512  # px; the activation map is image_size / 16 on a side
    config.min_votes = 2  # graders needed for "present"; 0 votes = absent; else excluded
    config.loader_threads = 8
    config.prefetch_batches = 2
    config.synthetic = ml_collections.ConfigDict()
    config.synthetic.num_train = 1800
    config.synthetic.num_test = 200
    config.synthetic.seed = 0
    config.synthetic.shortcut_finding = ""  # "" = no shortcut artifact
    config.synthetic.shortcut_strength = 0.9
    config.synthetic.height_px = 320  # photograph height before prepare crops and resizes it
    config.synthetic.prevalence = ""  # "FINDING=P,FINDING=P": per-finding prevalence; others 0.25

    # The guided CNN (§2.2): stride-2 stem, residual stages each closed by a reduction layer.
    config.guided_cnn = ml_collections.ConfigDict()
    config.guided_cnn.stem_width = 32
    config.guided_cnn.units_per_stage = (2, 3, 4)
    config.guided_cnn.aspp_width = 64
    config.guided_cnn.bn_momentum = 0.9
    # Initial bias of the depth-1 1x1 conv (the logit map); the paper's Xavier scheme: 0.
    config.guided_cnn.logit_bias_init = 0.0
    # Inception-v3 (Szegedy et al. 2016), the network of Gulshan et al. the paper compares with.
    config.inception_v3 = ml_collections.ConfigDict()
    config.inception_v3.aux_logits = False  # the auxiliary head on mixed_6e; needs image_size >= 299
    config.inception_v3.aux_weight = 0.4  # its BCE's weight in the training loss, as in the reference
    config.inception_v3.width_multiplier = 1.0  # scales every conv's channels; < 1 for CPU-scale runs
    config.inception_v3.bn_momentum = 0.9
    config.dtype = "float32"  # or "bfloat16" (compute; parameters stay float32)

    # Loss (eq. 3): total = BCE + guidance_weight * guidance; 0 = "without guidance".
    # inception_v3 is the BCE-only baseline: it needs guidance_weight = 0.
    config.guidance_weight = 1.0
    config.epsilon = 1e-3
    # The guidance warm-up (docs/GUIDANCE.md): lambda is 0 until the classifier has learnt (the
    # training BCE falls to guidance_start_bce times the BCE of the prevalence alone) or until
    # guidance_delay_steps, whichever comes first, then rises linearly to guidance_weight over
    # guidance_ramp_steps. The paper's setting: all three 0 (lambda = 1 from the first step), with
    # which guided training sticks at eq. 2's floor; set them to 0 to train exactly as printed.
    config.guidance_start_bce = 0.5
    config.guidance_delay_steps = 5_000
    config.guidance_ramp_steps = 2_000
    # "eq2" (the paper's guidance) or "log_complement" (an ablation: -(1 - m) log(1 - a), docs/GUIDANCE.md).
    config.guidance_form = "eq2"

    # Augmentation on the device (§3.1): random affine and intensity rescale.
    config.augment = ml_collections.ConfigDict()
    config.augment.enabled = True
    config.augment.flip = True
    config.augment.scale = (0.9, 1.1)
    config.augment.rotation_deg = 15.0
    config.augment.translation = 0.05
    config.augment.shear_deg = 5.0
    config.augment.intensity = (0.8, 1.2)

    # Optimisation (§3.1): SGD with Nesterov momentum 0.9, batch 32, decaying learning rate.
    config.batch_size = 32  # global, over all devices
    config.learning_rate = 0.01
    config.warmup_steps = 500  # linear learning-rate warm-up; the paper names none (0)
    config.momentum = 0.9
    config.weight_decay = 0.0
    config.lr_schedule = "plateau"  # "plateau" (of selection_metric), "cosine" or "constant"
    config.lr_plateau_factor = 0.1
    config.lr_plateau_patience = 3  # evaluations without improvement before decaying
    config.min_learning_rate = 1e-5
    config.early_stopping_patience = 8  # evaluations without improvement; 0 = never stop early
    config.num_train_steps = 20_000
    config.eval_every_steps = 500
    config.log_every_steps = 50
    # The best checkpoint, the plateau schedule and early stopping follow one validation number,
    # after the guidance warm-up: "val_loss" (eq. 3's total: the paper's, §3.1), "val_bce" or
    # "val_auroc" (docs/GUIDANCE.md).
    config.selection_metric = "val_bce"
    config.stall_patience = 2  # evaluations in a row at eq. 2's floor before the stall detector speaks
    config.checkpoints_to_keep = 3  # latest; the best by selection_metric is kept besides
    config.checkpoint_every_steps = 0  # 0: at every evaluation; a stop signal always saves
    # Besides those: a checkpoint once this many minutes passed since the last one (checked at each
    # logging step), for preemptible machines that may get no stop signal. 0 = off.
    config.checkpoint_every_minutes = 0.0
    config.skip_nonfinite_steps = False  # True: skip (count, log) NaN/Inf steps instead of stopping
    config.seed = 0
    # Fine-tuning: start from the parameters and BatchNorm statistics of another run of the same model,
    # "WORKDIR" (its best checkpoint, else its latest), "WORKDIR:STEP" or "WORKDIR/checkpoints/STEP";
    # the head is re-initialised where it cannot carry over, the optimiser starts fresh. "" = from scratch.
    config.init_from = ""
    # "START,N": a jax.profiler trace of N train steps from step START into WORKDIR/profile. "" = none.
    config.profile_steps = ""
    # Compiled steps kept on disk so a restart skips compiling: "" = $JAX_COMPILATION_CACHE_DIR if set,
    # else WORKDIR/jax_cache; "off" = none.
    config.compilation_cache_dir = ""
    return config
