"""The sgdf-erd demo: ``python -m sgdf_erd.demo --help``.

Modules, one concept each: data (images), model (U-Net), process (noise schedule), weighting (loss modules),
train (one run), sample (DDIM), metrics (classifier scores, Frechet distance), ntk (spectrum probe),
timing (optimizer step times), report (report.md and figures).
"""
