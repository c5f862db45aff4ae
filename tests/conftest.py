import os

import torch
from hypothesis import settings

torch.set_num_threads(2)

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) draws the same examples every run and keeps no example
# database, so a run's result depends on the code alone; elsewhere hypothesis draws anew each run
# (pass --hypothesis-seed=N to repeat one).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
