"""The evaluation protocol's rules, as pure computation on scores and images (no jobs, no store): image and
pixel metrics and their bootstrap CIs, the sanity checks and the statistics of their thresholds (``masking``),
when an image is settled (``settling``), the per-image worst case's choice and its kept images, and
randomized-smoothing certificates. The lowest stage: the grid's keys name these rules' versions and options."""
