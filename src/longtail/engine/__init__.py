"""Training engine: stages, the CUDA-graph trainer, checkpoints and run folders."""
from .runner import Run, run_config
from .stages import STAGE_KINDS, RunContext, StageKind, SupervisedStage
from .trainer import StagePlan, StageTrainer

__all__ = ["Run", "RunContext", "STAGE_KINDS", "StageKind", "StagePlan", "StageTrainer", "SupervisedStage", "run_config"]
