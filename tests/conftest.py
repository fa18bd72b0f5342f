"""Suite-wide settings.

The models here are tiny: torch's intra-op thread pool only adds contention on small CI
machines, so the suite runs torch single-threaded (results do not depend on it).
"""

import torch

torch.set_num_threads(1)
