"""kdtemp: fast, exact temperature-aware knowledge-distillation losses and
temperature schedulers (C kernels, NumPy API, PyTorch autograd in kdtemp.torch)."""
from kdtemp._buffer_cache import buffer_cache_info, empty_buffer_cache, set_buffer_cache
from kdtemp._threads import get_num_threads, set_num_threads
from kdtemp._types import ATKDResult, LossResult
from kdtemp.annealing import annealing_loss
from kdtemp.atkd import atkd_loss, presets, sharpness, sharpness_gap
from kdtemp.diagnostics import (RowStats, TemperatureProfile, match_sharpness, row_stats,
                                temperature_profile)
from kdtemp.dkd import dkd_loss
from kdtemp.dts import DTS
from kdtemp.kd import ce_loss, kd_loss, log_softmax, softmax
from kdtemp.temperature_fns import cwsm_temperature, flsw_temperature
from kdtemp.schedules import (AnnealingSchedule, ConstantTemperature, CosineTemperature,
                              LinearTemperature, StepTemperature, WeightWarmup)

__version__ = "0.1.0"

__all__ = [
    "LossResult",
    "ATKDResult",
    "kd_loss",
    "ce_loss",
    "softmax",
    "log_softmax",
    "atkd_loss",
    "presets",
    "sharpness",
    "sharpness_gap",
    "dkd_loss",
    "annealing_loss",
    "DTS",
    "AnnealingSchedule",
    "ConstantTemperature",
    "LinearTemperature",
    "CosineTemperature",
    "StepTemperature",
    "WeightWarmup",
    "row_stats",
    "RowStats",
    "temperature_profile",
    "TemperatureProfile",
    "match_sharpness",
    "flsw_temperature",
    "cwsm_temperature",
    "set_num_threads",
    "get_num_threads",
    "set_buffer_cache",
    "empty_buffer_cache",
    "buffer_cache_info",
]
