"""From-scratch LLaMA-2 / LLaMA-3(.1) / Mistral model with official checkpoint I/O."""
from model.config import CONFIGS, ModelConfig, get_config
from model.load import load_model
from model.save import save_model
from model.transformer import Transformer

__all__ = ["CONFIGS", "ModelConfig", "Transformer", "get_config", "load_model", "save_model"]
