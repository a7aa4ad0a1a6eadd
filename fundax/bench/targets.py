"""The targets of the project's benchmark plan (experiments/BENCHMARKS.md); a missed one is reported, not hidden.

Plain numbers, importable without jax: the accelerator check's report reads them too.
"""

TARGET_PEAK_SHARE = 0.40  # of the matmul peak in the step's dtype, measured in the same run
TARGET_AUGMENT_SHARE = 0.05  # of the train step
TARGET_WARM_FIRST_STEP_S = 5.0
TARGET_INPUT_PER_CORE = 1000.0  # images/s per host core at 512 px
TARGET_EAGER_RATIO = {"accelerator": 1.3, "cpu": 1.0}  # fundax's img/s over PyTorch eager's
TARGET_COMPILE_RATIO = 1.0  # over torch.compile's, on an accelerator
