"""When a latent dimension counts as used: the two thresholds behind every unit count.

Apart from `metrics.py` (which needs torch) so that pages which only show counts load quickly.
"""

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: Cov_x(E_q[z_u|x]) > 0.01
# A dimension carries real information about x when its average KL_j exceeds this (nats).
INFORMATIVE_KL_THRESHOLD = 0.05
