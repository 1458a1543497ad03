"""Bottom-up Policy Optimization (BuPO): GRPO that first trains an internal layer policy.

    from layerpolicy.bupo import TrainConfig, train
    result = train("smollm2-135m-instruct", None, out="runs/bupo", config=TrainConfig(steps=20))
    result.log       # one row per step: reward, entropies of pi_theta and pi^k, KL, loss, ...
    result.layer     # the trained layer k (1-based) and result.layer_reason, why it was chosen

See METHOD.md section 4 and `layerpolicy.bupo.loop` for the algorithm.
"""

from .loop import TrainConfig, TrainResult, train
from .reward import RewardFn, math_reward

__all__ = ["RewardFn", "TrainConfig", "TrainResult", "math_reward", "train"]
