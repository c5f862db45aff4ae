"""Optional bridges to other libraries (transformers' Trainer, lm-evaluation-harness); each module imports
its library, which the rest of the project never does (requirements-dev.txt)."""
