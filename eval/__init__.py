"""Evaluation: harness-style log-likelihood multiple choice, LLM-Adapters generation, MT-Bench."""
from eval.harness import evaluate
from eval.tasks import get_task, resolve_tasks

__all__ = ["evaluate", "get_task", "resolve_tasks"]
