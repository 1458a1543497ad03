"""Bottom-up Policy Optimization (BuPO): GRPO that first trains an internal layer policy.

    from layerpolicy.bupo import TrainConfig, train
    from layerpolicy.spec import RunSpec
    result = train("smollm2-135m-instruct", None, out="runs/bupo", config=TrainConfig(steps=20))
    result = train(RunSpec.from_preset("paper-qwen3-4b", steps=10), out="runs/paper")
    result.log       # one row per rollout: reward, entropies of pi_theta and pi^k, KL, loss, ...
    result.layer     # the trained layer k (1-based) and result.layer_reason, why it was chosen

Training runs on TRL's GRPOTrainer (`layerpolicy.bupo.trainer.BupoTrainer`); see
docs/method.md section 4 for the algorithm and docs/training.md for settings and launching.
"""

from .config import TrainConfig
from .reward import RewardFn, math_reward
from .run import TrainResult, train

__all__ = ["RewardFn", "TrainConfig", "TrainResult", "math_reward", "train"]
