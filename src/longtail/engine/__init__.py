"""Training engine: stages, the CUDA-graph trainer, checkpoints and run folders."""
from .runner import Run, run_config
from .stages import STAGE_KINDS, RunContext, StageKind, SupervisedStage
from .trainer import Member, StagePlan, Trainer

__all__ = ["Member", "Run", "RunContext", "STAGE_KINDS", "StageKind", "StagePlan", "SupervisedStage", "Trainer",
           "run_config"]
