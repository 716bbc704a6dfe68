"""Pure-NumPy twins of the kdtemp kernels (test oracles and benchmark baselines)."""
from kdtemp.reference.kd import kd_loss, ce_loss, softmax, log_softmax
from kdtemp.reference.atkd import atkd_loss, presets, sharpness, sharpness_gap
from kdtemp.reference.dkd import dkd_loss
from kdtemp.reference.annealing import annealing_loss
from kdtemp.reference.dts import ce_pair, dts_update
from kdtemp.reference.schedules import annealing_phi, annealing_t_prime_authors
from kdtemp.reference.diagnostics import match_sharpness, row_stats, temperature_profile
